//! `wwep`: the WWEP client — read, write, raw send, the course's LED toggle and
//! MAC device ids, over the open port or TLS.

use std::process::ExitCode;

use clap::Parser;
use wwep::bench;
use wwep::protocol::{Reply, Request};
use wwep::tls::TlsVersion;

mod args;
mod cli;
mod output;
mod watch;

use args::parse_hex;
use cli::{BenchArgs, Cli, Command, ConnectionArgs};

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
        Command::Bench(b) => bench_command(c, b, json),
        Command::DeviceId { mac } => {
            let id = args::device_id_from_mac(mac)?;
            if json {
                println!("{}", output::device_id_json(mac, id));
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
        Command::Toggle { device } => toggle(c, device.as_deref(), mac_device, json),
        Command::Watch(w) => watch::run(w, c, mac_device, json),
    }
}

/// `wwep bench`: the load, then its report; exit 2 when nothing completed.
fn bench_command(c: &ConnectionArgs, b: &BenchArgs, json: bool) -> Result<ExitCode, String> {
    let config = b.config()?;
    let mut client = c.client(b.newest_tls())?;
    if let Some(ip) = b.source_ip {
        client = client.with_source_ip(ip);
    }
    let report = bench::run(&client, &config)?;
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    if report.summary.completed > 0 {
        return Ok(ExitCode::SUCCESS);
    }
    // The report says why in its counts; the line says that it failed.
    eprintln!(
        "wwep: no transaction completed ({} failed, {} bad replies that were not WWEP, {} mismatched replies)",
        report.errors.values().sum::<u64>(),
        report.bad_replies,
        report.mismatched
    );
    Ok(ExitCode::from(2))
}

/// `wwep toggle`: reads the LED register and writes the other state.
fn toggle(
    c: &ConnectionArgs,
    device: Option<&str>,
    mac_device: Option<u16>,
    json: bool,
) -> Result<ExitCode, String> {
    let device = match (device, mac_device) {
        (Some(_), Some(_)) => {
            return Err("give DEVICE or --device-from-mac, not both".into());
        }
        (Some(d), None) => parse_hex(d, "DEVICE", 0xFFFF)? as u16,
        (None, Some(d)) => d,
        (None, None) => return Err("toggle needs DEVICE or --device-from-mac".into()),
    };
    let client = c.client(TlsVersion::Tls13)?;
    let read = Request::Read {
        device,
        register: LED_REGISTER,
    };
    // Both replies are checked against their request: a state read from
    // another register, or a write acknowledged for one, is no toggle.
    let current = client
        .transact_checked(read.encode().as_bytes())
        .map_err(|e| client.diagnose(e).to_string())?;
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
        .transact_checked(write.encode().as_bytes())
        .map_err(|e| client.diagnose(e).to_string())?;
    let state = if value == 1 { "on" } else { "off" };
    output::report(&reply, json, Some(state))
}

/// One transaction, reported; a reply that answers another request than
/// the one sent is an error, as a failed connection is.
fn exchange(c: &ConnectionArgs, request: &[u8], json: bool) -> Result<ExitCode, String> {
    let client = c.client(TlsVersion::Tls13)?;
    let reply = client
        .transact_checked(request)
        .map_err(|e| client.diagnose(e).to_string())?;
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
