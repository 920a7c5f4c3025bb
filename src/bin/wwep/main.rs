//! `wwep`: the WWEP client — read, write, raw send, the course's LED toggle and
//! MAC device ids, over the open port or TLS.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use wwep::bench::{self, AbuseConfig, BenchConfig, Load, Mix, Until};
use wwep::client::{Client, Link, ServerAddress};
use wwep::protocol::{Reply, Request};
use wwep::tls::{IdentitySource, Trust};

mod args;
mod output;

use args::parse_hex;

/// WWEP client: reads and writes registers on a wwep server.
///
/// Exit status: 0 when the server accepted (A), 1 when it failed the request (X),
/// 2 on a usage, network or TLS error.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// Print the result as one JSON object.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct ConnectionArgs {
    /// Server as HOST or HOST:PORT ([V6]:PORT for IPv6); port 27708, or 40508 with --tls.
    #[arg(long, global = true, default_value = "localhost")]
    server: String,
    /// Use the secure port and TLS.
    #[arg(long, global = true)]
    tls: bool,
    /// Trust exactly the CA certificates in FILE (PEM bundle or DER) instead of the system's.
    #[arg(long, global = true, value_name = "FILE", conflicts_with = "insecure")]
    ca: Option<PathBuf>,
    /// Verify the server's certificate against NAME instead of the --server host.
    #[arg(long, global = true, value_name = "NAME")]
    servername: Option<String>,
    /// Skip certificate verification (the link is then open to a man in the middle).
    #[arg(long, global = true)]
    insecure: bool,
    /// Client certificate (PEM) to present, for servers that require one.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        requires = "key",
        conflicts_with = "pkcs12"
    )]
    cert: Option<PathBuf>,
    /// Private key of --cert: PKCS#8, PKCS#1 or SEC1, PEM or DER.
    #[arg(long, global = true, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Client certificate and key as PKCS#12; password from WWEP_PKCS12_PASSWORD.
    #[arg(long, global = true, value_name = "FILE")]
    pkcs12: Option<PathBuf>,
    /// Milliseconds for connect, handshake and reply together.
    #[arg(long, global = true, default_value_t = 2000, value_name = "MS")]
    timeout_ms: u64,
    /// Use the device id of this MAC address (the sum of its six bytes) as DEVICE.
    #[arg(long, global = true, value_name = "MAC")]
    device_from_mac: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
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
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Concurrent workers, each one connection at a time.
    #[arg(allow_negative_numbers = true, short, long, default_value_t = bench::DEFAULT_CONCURRENCY as u64, value_parser = args::at_least_one)]
    concurrency: u64,
    /// Seconds to measure (after the warm-up).
    #[arg(allow_negative_numbers = true, long, default_value_t = bench::DEFAULT_DURATION_SECS, value_name = "SECS", value_parser = args::seconds, conflicts_with = "requests")]
    duration: f64,
    /// Stop after this many completed transactions instead of after --duration.
    #[arg(allow_negative_numbers = true, long, value_parser = args::at_least_one)]
    requests: Option<u64>,
    /// Seconds of load before measuring starts.
    #[arg(allow_negative_numbers = true, long, default_value_t = bench::DEFAULT_WARMUP_SECS, value_name = "SECS", value_parser = args::seconds)]
    warmup: f64,
    /// Open loop: this many transactions per second in total, on a fixed schedule;
    /// latency counts from the scheduled time and late or missed sends are reported.
    #[arg(allow_negative_numbers = true, long, value_name = "PER_SEC", value_parser = args::rate)]
    rate: Option<f64>,
    /// write, read, or READ/WRITE percentages such as 80/20.
    #[arg(long, default_value = "write", value_parser = args::mix)]
    mix: Mix,
    /// Spread requests over this many device ids instead of all 65,536.
    #[arg(long)]
    devices: Option<u32>,
    /// Connect from this local (loopback) address.
    #[arg(long, value_name = "IP", value_parser = args::loopback)]
    source_ip: Option<std::net::IpAddr>,
    /// Offer only TLS 1.2, as embedded TLS stacks do.
    #[arg(long)]
    tls12: bool,
    /// Meanwhile hold N idle connections that send nothing (reopened when closed).
    #[arg(
        allow_negative_numbers = true,
        long,
        value_name = "N",
        default_value_t = 0
    )]
    idle: usize,
    /// Meanwhile hold N connections that send their request (with --tls, a
    /// ClientHello) one byte per --slow-interval-ms.
    #[arg(
        allow_negative_numbers = true,
        long,
        value_name = "N",
        default_value_t = 0
    )]
    slow: usize,
    /// Pause between the bytes of a --slow connection.
    #[arg(allow_negative_numbers = true, long, value_name = "MS", default_value_t = bench::DEFAULT_SLOW_INTERVAL_MS)]
    slow_interval_ms: u64,
    /// Loopback addresses to spread the --idle and --slow connections over.
    #[arg(long, value_name = "IP", num_args = 1.., value_parser = args::loopback)]
    idle_from: Vec<std::net::IpAddr>,
    /// No progress line on stderr.
    #[arg(short, long)]
    quiet: bool,
}

impl BenchArgs {
    fn config(&self) -> Result<BenchConfig, String> {
        let config = BenchConfig {
            concurrency: usize::try_from(self.concurrency)
                .map_err(|_| "--concurrency is too large".to_string())?,
            until: match self.requests {
                Some(n) => Until::Completed(n),
                None => Until::Elapsed(Duration::from_secs_f64(self.duration)),
            },
            warmup: Duration::from_secs_f64(self.warmup),
            load: match self.rate {
                Some(per_second) => Load::Open { per_second },
                None => Load::Closed,
            },
            mix: self.mix,
            devices: self.devices,
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

/// The LED register of the course's button exercise.
const LED_REGISTER: u8 = 0x05;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A bad value is one line naming the flag; other usage errors show the usage.
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::ValueValidation | clap::error::ErrorKind::InvalidValue
            ) =>
        {
            let rendered = e.to_string();
            let line = rendered.lines().next().unwrap_or_default();
            eprintln!("wwep: {}", line.strip_prefix("error: ").unwrap_or(line));
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("wwep: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    let json = cli.json;
    let c = &cli.connection;
    let mac_device = c
        .device_from_mac
        .as_deref()
        .map(args::device_id_from_mac)
        .transpose()?;
    match &cli.command {
        Command::Bench(b) => {
            let config = b.config()?;
            let mut client = connect_with(c, b.tls12)?;
            if let Some(ip) = b.source_ip {
                client = client.with_source_ip(ip);
            }
            let report = bench::run(&client, &config)?;
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
            Ok(if report.summary.completed > 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::DeviceId { mac } => {
            let id = args::device_id_from_mac(mac)?;
            if json {
                println!(
                    "{{\"mac\":{},\"device\":\"{id:04X}\"}}",
                    output::json_string(mac.as_bytes())
                );
            } else {
                println!("{id:04X}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Read { fields } => {
            let [device, register] = device_fields(fields, mac_device, &["REGISTER"])?[..] else {
                unreachable!("device_fields returns one value per name plus the device")
            };
            let request = Request::Read {
                device: device as u16,
                register: register as u8,
            };
            exchange(c, request.encode().as_bytes(), json)
        }
        Command::Write { fields } => {
            let [device, register, value] =
                device_fields(fields, mac_device, &["REGISTER", "VALUE"])?[..]
            else {
                unreachable!("device_fields returns one value per name plus the device")
            };
            let request = Request::Write {
                device: device as u16,
                register: register as u8,
                value: value as u16,
            };
            exchange(c, request.encode().as_bytes(), json)
        }
        Command::Send { message } => exchange(c, &args::unescape(message)?, json),
        Command::Toggle { device } => {
            let device = match (device, mac_device) {
                (Some(_), Some(_)) => {
                    return Err("give DEVICE or --device-from-mac, not both".into());
                }
                (Some(d), None) => parse_hex(d, "DEVICE", 0xFFFF)? as u16,
                (None, Some(d)) => d,
                (None, None) => return Err("toggle needs DEVICE or --device-from-mac".into()),
            };
            let client = connect(c)?;
            let read = Request::Read {
                device,
                register: LED_REGISTER,
            };
            let current = client
                .transact(read.encode().as_bytes())
                .map_err(|e| e.to_string())?;
            // A register never written counts as off, as on a board fresh from reset.
            let was_on =
                matches!(Reply::parse(&current), Some(Reply::Accepted { value, .. }) if value != 0);
            let value = u16::from(!was_on);
            let write = Request::Write {
                device,
                register: LED_REGISTER,
                value,
            };
            let reply = client
                .transact(write.encode().as_bytes())
                .map_err(|e| e.to_string())?;
            let state = if value == 1 { "on" } else { "off" };
            output::report(&reply, json, Some(state))
        }
    }
}

/// One transaction, reported.
fn exchange(c: &ConnectionArgs, request: &[u8], json: bool) -> Result<ExitCode, String> {
    let reply = connect(c)?.transact(request).map_err(|e| e.to_string())?;
    output::report(&reply, json, None)
}

/// Parses DEVICE (unless it comes from --device-from-mac) followed by `names`.
fn device_fields(
    fields: &[String],
    mac_device: Option<u16>,
    names: &[&str],
) -> Result<Vec<u32>, String> {
    let mut values = Vec::with_capacity(names.len() + 1);
    let rest = match mac_device {
        Some(device) => {
            if fields.len() != names.len() {
                return Err(format!(
                    "with --device-from-mac give only {}",
                    names.join(" ")
                ));
            }
            values.push(u32::from(device));
            fields
        }
        None => {
            if fields.len() != names.len() + 1 {
                return Err(format!(
                    "expected DEVICE {} (or --device-from-mac MAC)",
                    names.join(" ")
                ));
            }
            values.push(parse_hex(&fields[0], "DEVICE", 0xFFFF)?);
            &fields[1..]
        }
    };
    for (text, name) in rest.iter().zip(names) {
        let max = if *name == "REGISTER" { 0xFF } else { 0xFFFF };
        values.push(parse_hex(text, name, max)?);
    }
    Ok(values)
}

fn connect(c: &ConnectionArgs) -> Result<Client, String> {
    connect_with(c, false)
}

fn connect_with(c: &ConnectionArgs, only_tls12: bool) -> Result<Client, String> {
    let address = ServerAddress::parse(&c.server)?;
    let tls_only = [
        (c.ca.is_some(), "--ca"),
        (c.servername.is_some(), "--servername"),
        (c.insecure, "--insecure"),
        (
            c.cert.is_some() || c.pkcs12.is_some(),
            "a client certificate",
        ),
    ];
    let link = if c.tls {
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
        let connector = wwep::tls::client_connector(&trust, identity.as_ref(), only_tls12)
            .map_err(|e| e.to_string())?;
        Link::Tls {
            connector,
            servername: c.servername.clone().unwrap_or_else(|| address.host.clone()),
        }
    } else {
        if let Some((_, flag)) = tls_only.iter().find(|(given, _)| *given) {
            return Err(format!("{flag} needs --tls"));
        }
        Link::Plain
    };
    if c.timeout_ms == 0 {
        return Err("--timeout-ms must be greater than 0".into());
    }
    Client::new(&address, link, Duration::from_millis(c.timeout_ms)).map_err(|e| e.to_string())
}
