//! Names for the servers behind causeway, so a log line can say
//! `Reading ride 96 from server 'replica0'` instead of a port number.
//!
//! The app asks the server that answered a read for `inet_server_port()` (and
//! `pg_is_in_recovery()`) in the same statement; this map turns the port
//! into a name. It comes from `--servers primary=5433,replica0=5434,...`
//! (or `DEMO_SERVERS`), defaulting to the ports of `cluster/cluster.sh`.

use std::collections::BTreeMap;
use std::str::FromStr;

/// The ports `cluster/cluster.sh start` uses by default.
pub const DEFAULT_SERVERS: &str = "primary=5433,replica0=5434,replica1=5435";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerNames {
    by_port: BTreeMap<u16, String>,
}

impl ServerNames {
    pub fn new(servers: impl IntoIterator<Item = (String, u16)>) -> ServerNames {
        ServerNames {
            by_port: servers
                .into_iter()
                .map(|(name, port)| (port, name))
                .collect(),
        }
    }

    /// The name of the server listening on `port`; a server not in the map
    /// is named by its role and port, e.g. `replica(port 6001)`.
    pub fn name_of(&self, port: i32, in_recovery: bool) -> String {
        let known = u16::try_from(port).ok().and_then(|p| self.by_port.get(&p));
        match known {
            Some(name) => name.clone(),
            None if in_recovery => format!("replica(port {port})"),
            None => format!("primary(port {port})"),
        }
    }
}

impl Default for ServerNames {
    fn default() -> Self {
        DEFAULT_SERVERS
            .parse()
            .unwrap_or_else(|_| ServerNames::new([]))
    }
}

impl FromStr for ServerNames {
    type Err = String;

    /// `name=port,name=port`; whitespace around items is ignored.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut servers = Vec::new();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, port) = item
                .split_once('=')
                .ok_or_else(|| format!("expected name=port, got {item:?}"))?;
            let port: u16 = port
                .trim()
                .parse()
                .map_err(|_| format!("bad port in {item:?}"))?;
            servers.push((name.trim().to_string(), port));
        }
        Ok(ServerNames::new(servers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names() {
        let names: ServerNames = "primary=5433, replica0=5434".parse().unwrap();
        assert_eq!(names.name_of(5433, false), "primary");
        assert_eq!(names.name_of(5434, true), "replica0");
        assert_eq!(names.name_of(6001, true), "replica(port 6001)");
        assert_eq!(names.name_of(6002, false), "primary(port 6002)");
        assert_eq!(names.name_of(-1, false), "primary(port -1)");
    }

    #[test]
    fn rejects_junk() {
        assert!("primary".parse::<ServerNames>().is_err());
        assert!("primary=x".parse::<ServerNames>().is_err());
        assert!("primary=70000".parse::<ServerNames>().is_err());
        assert_eq!("".parse::<ServerNames>(), Ok(ServerNames::new([])));
    }

    #[test]
    fn default_is_the_local_cluster() {
        assert_eq!(ServerNames::default().name_of(5435, true), "replica1");
    }
}
