//! Where the shared store is: the `--store` grammar (a Redis URL or Sentinels
//! and a primary's name), printed without credentials, and what a write waits
//! for.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use redis::IntoConnectionInfo;

use crate::protocol::Transport;

/// Where the registers live.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreLocation {
    /// In this process (with `--data`, in its data file).
    #[default]
    Memory,
    /// One Redis/Valkey server: `redis://[user:pass@]host:port[/db]`, or
    /// `rediss://…` for TLS.
    Redis { url: String },
    /// The primary that Sentinel names:
    /// `redis+sentinel://[user:pass@]host:port[,host:port…]/PRIMARY[/db]`
    /// (`rediss+sentinel://` for TLS to the data nodes).
    Sentinel {
        sentinels: Vec<String>,
        primary: String,
        /// `redis://[user:pass@]host:port/db` with the credentials and database
        /// for the data nodes (the host is a placeholder).
        node: String,
        /// Plain or TLS to the data nodes.
        transport: Transport,
    },
}

impl StoreLocation {
    pub fn is_memory(&self) -> bool {
        *self == StoreLocation::Memory
    }
}

impl FromStr for StoreLocation {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let usage = || {
            format!(
                "'{}' is not a store: expected memory, redis://HOST:PORT[/DB], rediss://… or redis+sentinel://HOST:PORT[,HOST:PORT…]/PRIMARY[/DB]",
                without_credentials(text)
            )
        };
        if text == "memory" {
            return Ok(StoreLocation::Memory);
        }
        if text.starts_with("redis://") || text.starts_with("rediss://") {
            text.into_connection_info().map_err(|_| usage())?;
            return Ok(StoreLocation::Redis {
                url: text.to_string(),
            });
        }
        let (transport, rest) = if let Some(rest) = text.strip_prefix("redis+sentinel://") {
            (Transport::Plain, rest)
        } else if let Some(rest) = text.strip_prefix("rediss+sentinel://") {
            (Transport::Tls, rest)
        } else {
            return Err(usage());
        };
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((user, rest)) => (format!("{user}@"), rest),
            None => (String::new(), rest),
        };
        let (hosts, path) = rest.split_once('/').ok_or_else(usage)?;
        let (primary, db) = match path.split_once('/') {
            Some((primary, db)) => (primary, db.parse::<u32>().map_err(|_| usage())?),
            None => (path, 0),
        };
        if primary.is_empty() || hosts.is_empty() {
            return Err(usage());
        }
        let sentinels: Vec<String> = hosts
            .split(',')
            .map(|host| format!("redis://{host}"))
            .collect();
        for sentinel in &sentinels {
            sentinel
                .as_str()
                .into_connection_info()
                .map_err(|_| usage())?;
        }
        Ok(StoreLocation::Sentinel {
            sentinels,
            primary: primary.to_string(),
            node: format!("redis://{userinfo}localhost/{db}"),
            transport,
        })
    }
}

/// `scheme://user:secret@rest` as `scheme://***@rest`, for messages.
fn without_credentials(text: &str) -> String {
    match (text.split_once("://"), text.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, rest))) => format!("{scheme}://***@{rest}"),
        _ => text.to_string(),
    }
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::Memory => f.write_str("memory"),
            // Credentials stay out of logs.
            StoreLocation::Redis { url } => match url.as_str().into_connection_info() {
                Ok(info) => write!(f, "redis {}", info.addr()),
                Err(_) => f.write_str("redis"),
            },
            StoreLocation::Sentinel {
                sentinels, primary, ..
            } => write!(
                f,
                "primary {primary} of sentinels {}",
                sentinels
                    .iter()
                    .map(|s| s.trim_start_matches("redis://"))
                    .map(|s| s.rsplit_once('@').map_or(s, |(_, host)| host))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
}

/// How a shared store is reached and what a write must wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub location: StoreLocation,
    /// Keys are `PREFIX:DEV`.
    pub prefix: String,
    /// CA certificates (PEM) that sign the Redis server's certificate, for
    /// `rediss://`; the system's roots otherwise.
    pub ca: Option<PathBuf>,
    /// A write is acknowledged only once this many replicas have it (`WAIT`).
    pub wait_replicas: u32,
    /// …and once it is in the append-only file of the primary (and of the
    /// replicas waited for) (`WAITAOF`, Redis/Valkey 7.2+).
    pub wait_aof: bool,
}

pub const DEFAULT_PREFIX: &str = "wwep";

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            location: StoreLocation::Memory,
            prefix: DEFAULT_PREFIX.to_string(),
            ca: None,
            wait_replicas: 0,
            wait_aof: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_locations() {
        assert_eq!("memory".parse(), Ok(StoreLocation::Memory));
        assert_eq!(
            "redis://127.0.0.1:6379/2".parse(),
            Ok(StoreLocation::Redis {
                url: "redis://127.0.0.1:6379/2".to_string()
            })
        );
        assert!(matches!(
            "rediss://user:pw@redis.example:6380".parse(),
            Ok(StoreLocation::Redis { .. })
        ));
        assert_eq!(
            "redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379/main/3".parse(),
            Ok(StoreLocation::Sentinel {
                sentinels: vec![
                    "redis://10.0.0.1:26379".to_string(),
                    "redis://10.0.0.2:26379".to_string()
                ],
                primary: "main".to_string(),
                node: "redis://:pw@localhost/3".to_string(),
                transport: Transport::Plain,
            })
        );
        for bad in [
            "",
            "redis",
            "http://x",
            "redis+sentinel://h:1",
            "redis+sentinel://h:1/",
            "redis+sentinel:///main",
            "redis+sentinel://h:1/main/x",
        ] {
            let err = bad.parse::<StoreLocation>().unwrap_err();
            assert!(err.contains("not a store"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_bad_location_is_refused_without_its_password() {
        let err = "redis://user:secret@host:notaport"
            .parse::<StoreLocation>()
            .unwrap_err();
        assert!(!err.contains("secret") && err.contains("***@host"), "{err}");
    }

    #[test]
    fn locations_print_without_credentials() {
        let redis: StoreLocation = "redis://user:secret@127.0.0.1:6379".parse().unwrap();
        assert!(!redis.to_string().contains("secret"), "{redis}");
        let sentinel: StoreLocation = "redis+sentinel://u:secret@h1:1,h2:2/main".parse().unwrap();
        assert_eq!(sentinel.to_string(), "primary main of sentinels h1:1,h2:2");
    }
}
