//! The `wwep` command line: flags, their defaults (read from the library's
//! constants) and how they become a client and a benchmark configuration.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use wwep::bench::{self, AbuseConfig, BenchConfig, Load, Mix, Until};
use wwep::client::{Client, Link, ServerAddress};
use wwep::protocol::Reply;
use wwep::tls::client::{Connector, ResumeWith, ResumingConnector, Trust};
use wwep::tls::{IdentitySource, TlsVersion};

use crate::args;

/// WWEP client: reads and writes registers on a wwep server.
///
/// Exit status: 0 when the server accepted (A), 1 when it failed the request (X),
/// 2 on a usage, network or TLS error, or an A for another register or value
/// than the request's.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
pub struct Cli {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Print the result as one JSON object.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug)]
pub struct ConnectionArgs {
    /// Server as HOST or HOST:PORT ([V6]:PORT for IPv6); port 27708, or 40508 with --tls.
    #[arg(long, global = true, default_value = "localhost")]
    pub server: String,
    /// Use the secure port and TLS.
    #[arg(long, global = true)]
    pub tls: bool,
    /// Trust exactly the CA certificates in FILE (PEM bundle or DER) instead of the system's.
    #[arg(long, global = true, value_name = "FILE", conflicts_with = "insecure")]
    pub ca: Option<PathBuf>,
    /// Verify the server's certificate against NAME instead of the --server host.
    #[arg(long, global = true, value_name = "NAME")]
    pub servername: Option<String>,
    /// Skip certificate verification (the link is then open to a man in the middle).
    #[arg(long, global = true)]
    pub insecure: bool,
    /// Offer the TLS session of the previous connection, as a board does (TLS 1.2
    /// session ID or ticket, TLS 1.3 ticket); needs --tls and --ca.
    #[arg(long, global = true)]
    pub resume: bool,
    /// With --resume, how TLS 1.2 sessions resume: ticket (a ticket when the
    /// server gives one, else the session ID) or session-id (session ID only, no
    /// tickets asked for; needs bench --tls12, as TLS 1.3 resumes by ticket only).
    #[arg(long, global = true, value_name = "HOW", value_enum)]
    pub resume_with: Option<ResumeWith>,
    /// Client certificate (PEM) to present, for servers that require one.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        requires = "key",
        conflicts_with = "pkcs12"
    )]
    pub cert: Option<PathBuf>,
    /// Private key of --cert: PKCS#8, PKCS#1 or SEC1, PEM or DER.
    #[arg(long, global = true, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Client certificate and key as PKCS#12; password from WWEP_PKCS12_PASSWORD.
    #[arg(long, global = true, value_name = "FILE")]
    pub pkcs12: Option<PathBuf>,
    /// Milliseconds for connect, handshake and reply together.
    #[arg(allow_negative_numbers = true, long, global = true, default_value_t = 2000, value_name = "MS", value_parser = args::milliseconds)]
    pub timeout_ms: u64,
    /// Use the device id of this MAC address (the sum of its six bytes) as DEVICE.
    #[arg(long, global = true, value_name = "MAC")]
    pub device_from_mac: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Read a register: prints the reply (A… with the value, or X).
    #[command(
        override_usage = "wwep read [OPTIONS] <DEVICE> <REGISTER>\n       wwep read [OPTIONS] --device-from-mac <MAC> <REGISTER>"
    )]
    Read {
        /// DEVICE (hex 0000-FFFF; omitted with --device-from-mac) and REGISTER (hex 00-FF).
        #[arg(value_name = "FIELDS", num_args = 1..=2, required = true)]
        fields: Vec<String>,
    },
    /// Write a register: prints the reply (A… on success, or X).
    #[command(
        override_usage = "wwep write [OPTIONS] <DEVICE> <REGISTER> <VALUE>\n       wwep write [OPTIONS] --device-from-mac <MAC> <REGISTER> <VALUE>"
    )]
    Write {
        /// DEVICE (hex; omitted with --device-from-mac), REGISTER (hex 00-FF), VALUE (hex 0000-FFFF).
        #[arg(value_name = "FIELDS", num_args = 2..=3, required = true)]
        fields: Vec<String>,
    },
    /// Send MESSAGE exactly as given (escapes \n \r \t \\ \xNN) and print the reply.
    Send {
        #[arg(allow_hyphen_values = true)]
        message: String,
    },
    /// The course's button press: flip the LED register 05 of DEVICE between 0000 and 0001.
    #[command(
        override_usage = "wwep toggle [OPTIONS] <DEVICE>\n       wwep toggle [OPTIONS] --device-from-mac <MAC>"
    )]
    Toggle {
        /// DEVICE (hex 0000-FFFF); omitted with --device-from-mac.
        device: Option<String>,
    },
    /// Print the device id of a MAC address: the 16-bit sum of its six bytes.
    DeviceId { mac: String },
    /// Load benchmark: concurrent one-shot transactions; prints rate and latency.
    Bench(BenchArgs),
    /// Print each write the server acknowledges, as it happens, one line each
    /// (read from its --http side's /api/events).
    Watch(crate::watch::WatchArgs),
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Benchmark options")]
pub struct BenchArgs {
    /// Concurrent workers, each one connection at a time.
    #[arg(allow_negative_numbers = true, short, long, default_value_t = bench::DEFAULT_CONCURRENCY as u64, value_parser = args::concurrency)]
    pub concurrency: u64,
    /// Seconds to measure (after the warm-up), 10 unless --requests is given;
    /// with --requests, the most to wait for them.
    #[arg(allow_negative_numbers = true, long, value_name = "SECS", value_parser = args::duration)]
    pub duration: Option<f64>,
    /// Stop after exactly this many completed transactions (or when --duration,
    /// if given, runs out first).
    #[arg(allow_negative_numbers = true, long, value_parser = args::requests)]
    pub requests: Option<u64>,
    /// Seconds of load before measuring starts.
    #[arg(allow_negative_numbers = true, long, default_value_t = bench::DEFAULT_WARMUP_SECS, value_name = "SECS", value_parser = args::warmup)]
    pub warmup: f64,
    /// Open loop: this many transactions per second in total, on a fixed schedule;
    /// latency counts from the scheduled time and late or missed sends are reported.
    #[arg(allow_negative_numbers = true, long, value_name = "PER_SEC", value_parser = args::rate)]
    pub rate: Option<f64>,
    /// write, read, or READ/WRITE percentages such as 80/20.
    #[arg(long, default_value = "write", value_parser = args::mix)]
    pub mix: Mix,
    /// Spread requests over this many device ids instead of all 65,536.
    #[arg(allow_negative_numbers = true, long, value_name = "N", value_parser = args::devices)]
    pub devices: Option<u32>,
    /// Expect this A reply to every request instead of the one for it: for a
    /// stand-in server that answers a constant (nginx's `return` in `make bench`).
    #[arg(long, value_name = "REPLY", value_parser = args::accepted_reply)]
    pub expect_reply: Option<Reply>,
    /// Connect from this local (loopback) address.
    #[arg(long, value_name = "IP", value_parser = args::loopback)]
    pub source_ip: Option<std::net::IpAddr>,
    /// Offer only TLS 1.2, as embedded TLS stacks do.
    #[arg(long)]
    pub tls12: bool,
    /// Meanwhile hold N idle connections that send nothing (reopened when closed).
    #[arg(
        allow_negative_numbers = true,
        long,
        value_name = "N",
        default_value_t = 0,
        value_parser = args::abuse_connections
    )]
    pub idle: usize,
    /// Meanwhile hold N connections that send their request (with --tls, a
    /// ClientHello) one byte per --slow-interval-ms.
    #[arg(
        allow_negative_numbers = true,
        long,
        value_name = "N",
        default_value_t = 0,
        value_parser = args::abuse_connections
    )]
    pub slow: usize,
    /// Pause between the bytes of a --slow connection.
    #[arg(allow_negative_numbers = true, long, value_name = "MS", default_value_t = bench::DEFAULT_SLOW_INTERVAL_MS, value_parser = args::milliseconds)]
    pub slow_interval_ms: u64,
    /// Loopback addresses to spread the --idle and --slow connections over.
    #[arg(long, value_name = "IP", num_args = 1.., value_parser = args::loopback)]
    pub idle_from: Vec<std::net::IpAddr>,
    /// No progress line on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

impl BenchArgs {
    /// The newest TLS version the benchmark's client offers.
    pub fn newest_tls(&self) -> TlsVersion {
        if self.tls12 {
            TlsVersion::Tls12
        } else {
            TlsVersion::Tls13
        }
    }

    pub fn config(&self) -> Result<BenchConfig, String> {
        let config = BenchConfig {
            concurrency: usize::try_from(self.concurrency)
                .map_err(|_| "--concurrency is too large".to_string())?,
            until: match self.requests {
                Some(count) => Until::Completed {
                    count,
                    within: self.duration.map(Duration::from_secs_f64),
                },
                None => Until::Elapsed(Duration::from_secs_f64(
                    self.duration.unwrap_or(bench::DEFAULT_DURATION_SECS),
                )),
            },
            warmup: Duration::from_secs_f64(self.warmup),
            load: match self.rate {
                Some(per_second) => Load::Open { per_second },
                None => Load::Closed,
            },
            mix: self.mix,
            devices: self.devices,
            expected_reply: self.expect_reply,
            abuse: AbuseConfig {
                idle: self.idle,
                slow: self.slow,
                slow_interval: Duration::from_millis(self.slow_interval_ms),
                from: self.idle_from.clone(),
            },
            progress: !self.quiet,
        };
        config.validate()?;
        Ok(config)
    }
}

impl ConnectionArgs {
    /// The client these flags describe, offering TLS versions up to `newest`
    /// (1.2 for `bench --tls12`).
    pub fn client(&self, newest: TlsVersion) -> Result<Client, String> {
        let c = self;
        let address = ServerAddress::parse(&c.server).map_err(|e| e.to_string())?;
        let tls_only = [
            (c.ca.is_some(), "--ca"),
            (c.servername.is_some(), "--servername"),
            (c.insecure, "--insecure"),
            (
                c.cert.is_some() || c.pkcs12.is_some(),
                "a client certificate",
            ),
            (c.resume, "--resume"),
            (c.resume_with.is_some(), "--resume-with"),
        ];
        let link = if c.tls {
            if c.resume_with.is_some() && !c.resume {
                return Err("--resume-with needs --resume".into());
            }
            let resume_with = c.resume_with.unwrap_or_default();
            if resume_with == ResumeWith::SessionId && newest != TlsVersion::Tls12 {
                return Err(
                    "--resume-with session-id needs bench --tls12 (TLS 1.3 resumes by ticket only)"
                        .into(),
                );
            }
            let trust = match (&c.ca, c.insecure) {
                (Some(ca), _) => Trust::CaFile(ca.clone()),
                (None, true) => {
                    eprintln!(
                        "wwep: warning: --insecure: the server's certificate is not verified; the link is encrypted but open to a man in the middle"
                    );
                    Trust::Insecure
                }
                (None, false) => Trust::System,
            };
            let identity = match (&c.cert, &c.key, &c.pkcs12) {
                (Some(cert), Some(key), _) => Some(IdentitySource::Pem {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                (_, _, Some(file)) => Some(IdentitySource::Pkcs12 {
                    file: file.clone(),
                    password: std::env::var("WWEP_PKCS12_PASSWORD").unwrap_or_default(),
                }),
                _ => None,
            };
            let servername = c.servername.clone().unwrap_or_else(|| address.host.clone());
            if c.resume {
                let Some(ca) = &c.ca else {
                    return Err(
                        "--resume needs --ca (the resuming client trusts exactly that CA)".into(),
                    );
                };
                let connector =
                    ResumingConnector::new(ca, identity.as_ref(), newest, resume_with, &servername)
                        .map_err(|e| e.to_string())?;
                Link::resuming(connector)
            } else {
                let connector =
                    Connector::new(&trust, identity.as_ref(), newest).map_err(|e| e.to_string())?;
                Link::Tls {
                    connector,
                    servername,
                }
            }
        } else {
            if let Some((_, flag)) = tls_only.iter().find(|(given, _)| *given) {
                return Err(format!("{flag} needs --tls"));
            }
            Link::Plain
        };
        Client::new(&address, link, Duration::from_millis(c.timeout_ms)).map_err(|e| e.to_string())
    }
}
