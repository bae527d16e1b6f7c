//! The few lines of RFC 6455 a DevTools client needs: the opening
//! handshake, masked text frames out, whole text messages in (answering
//! pings). Blocking, over a `TcpStream`, with no crate.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct WebSocket {
    stream: TcpStream,
}

const TEXT: u8 = 0x1;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

impl WebSocket {
    /// Opens `ws://{host}{path}`; `host` is `address:port`.
    pub fn connect(host: &str, path: &str) -> Result<WebSocket, String> {
        let mut stream = TcpStream::connect(host).map_err(|e| format!("connect {host}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| format!("read timeout: {e}"))?;
        // The server must answer the key, not keep it: any will do.
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: Y2F1c2V3YXktZGFzaGJvYXJk\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .map_err(|e| format!("send the handshake to {host}: {e}"))?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream
                .read_exact(&mut byte)
                .map_err(|e| format!("read the handshake answer of {host}{path}: {e}"))?;
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        if !head.starts_with("HTTP/1.1 101") {
            return Err(format!("{host}{path} refused the WebSocket: {head}"));
        }
        Ok(WebSocket { stream })
    }

    pub fn send_text(&mut self, text: &str) -> Result<(), String> {
        self.send(TEXT, text.as_bytes())
    }

    /// The next whole text message.
    pub fn receive_text(&mut self) -> Result<String, String> {
        let mut message = Vec::new();
        loop {
            let (fin, opcode, payload) = self.frame()?;
            match opcode {
                TEXT | CONTINUATION => {
                    message.extend_from_slice(&payload);
                    if fin {
                        return String::from_utf8(message)
                            .map_err(|e| format!("a text message that is not UTF-8: {e}"));
                    }
                }
                PING => self.send(PONG, &payload)?,
                CLOSE => return Err("the browser closed the DevTools connection".to_string()),
                _ => {}
            }
        }
    }

    /// One frame: FIN, opcode, unmasked payload.
    fn frame(&mut self) -> Result<(bool, u8, Vec<u8>), String> {
        let mut head = [0u8; 2];
        self.read(&mut head)?;
        let fin = head[0] & 0x80 != 0;
        let opcode = head[0] & 0x0F;
        let length = match head[1] & 0x7F {
            126 => {
                let mut length = [0u8; 2];
                self.read(&mut length)?;
                u64::from(u16::from_be_bytes(length))
            }
            127 => {
                let mut length = [0u8; 8];
                self.read(&mut length)?;
                u64::from_be_bytes(length)
            }
            short => u64::from(short),
        };
        let mask = if head[1] & 0x80 != 0 {
            let mut mask = [0u8; 4];
            self.read(&mut mask)?;
            Some(mask)
        } else {
            None
        };
        let length = usize::try_from(length).map_err(|_| "a frame too long".to_string())?;
        let mut payload = vec![0u8; length];
        self.read(&mut payload)?;
        if let Some(mask) = mask {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= mask[i % 4];
            }
        }
        Ok((fin, opcode, payload))
    }

    fn read(&mut self, buffer: &mut [u8]) -> Result<(), String> {
        self.stream
            .read_exact(buffer)
            .map_err(|e| format!("read from the DevTools WebSocket: {e}"))
    }

    /// One final frame; a client masks every frame it sends.
    fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<(), String> {
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= usize::from(u16::MAX) => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0x5eed_cafe)
            .to_be_bytes();
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream
            .write_all(&frame)
            .map_err(|e| format!("write to the DevTools WebSocket: {e}"))
    }
}
