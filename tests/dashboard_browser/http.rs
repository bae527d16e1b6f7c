//! A blocking HTTP/1.1 GET over `TcpStream`, for causeway's metrics address
//! and Chromium's DevTools server: no client crate.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// GETs `path` from `host` (`address:port`): the head and the body of a
/// 200 answer, an error otherwise.
pub fn get(host: &str, path: &str) -> Result<(String, String), String> {
    let mut stream = TcpStream::connect(host).map_err(|e| format!("connect {host}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send to {host}: {e}"))?;
    // The head, then as many bytes as it says: a server may keep the
    // connection open whatever the client asks.
    let mut response = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let read = stream
            .read(&mut chunk)
            .map_err(|e| format!("read from {host}{path}: {e}"))?;
        if read == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..read]);
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&response[..end]);
            let length = head.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            });
            if length.is_some_and(|length| response.len() - end - 4 >= length) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no answer from {host}{path}: {text:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{host}{path}: {head}"));
    }
    Ok((head.to_string(), body.to_string()))
}
