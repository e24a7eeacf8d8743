//! `satsuma token create`: mints a join token locally with the configured token secret (the
//! same HS256 secret the server checks), and prints it with a join link that carries it in the
//! URL fragment (`#token=`), which browsers never send to the server.

use std::path::PathBuf;

use anyhow::bail;
use satsuma_coordinator::auth::{TokenKeys, check_secret, unix_now};
use satsuma_coordinator::protocol::Permissions;
use satsuma_coordinator::token_cli::{JoinRequest, Minted, mint, parse_duration_s};

use crate::settings::{DEFAULT_LISTEN, FileSettings};

/// `satsuma token ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub(crate) enum TokenCommand {
    /// Mint a join token with the configured token secret and print it with a join link.
    ///
    /// The token admits one identity to one room with the given grants until it expires. The
    /// link carries it after `#token=`: the browser keeps the fragment to itself, so the token
    /// never reaches server or proxy logs. Anyone holding the token can join as that identity
    /// until it expires: send it over a channel you trust.
    Create(CreateArgs),
}

/// Options of `satsuma token create`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CreateArgs {
    /// Room the token admits to (1-64 of A-Z a-z 0-9 . _ -).
    #[arg(long, value_name = "ROOM")]
    pub(crate) room: String,

    /// Identity of the participant (the token's `sub`): your app's user id or e-mail address.
    #[arg(long, value_name = "ID")]
    pub(crate) identity: String,

    /// Display name shown to the others (default: the identity; at most 64 characters).
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,

    /// Grant host rights: mute others, remove participants, lock the room, set its cap, make
    /// invite links; a host also joins a locked or full room.
    #[arg(long)]
    pub(crate) host: bool,

    /// Lifetime of the token: seconds, or a number with s, m, h or d (e.g. 90m, 1h). At most
    /// 24h. [default: 6h]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_s)]
    pub(crate) ttl: Option<u64>,

    /// Do not grant `publish`: the participant may watch and listen but not send media.
    #[arg(long)]
    pub(crate) no_publish: bool,

    /// Do not grant `subscribe`: the participant may send but not receive media.
    #[arg(long)]
    pub(crate) no_subscribe: bool,

    /// Grant `recorder`: the holder joins as a visible recorder (every member sees
    /// "Recording by <name>"); for the `satsuma-record` tool an operator runs.
    #[arg(long)]
    pub(crate) recorder: bool,

    /// Secret that signs join tokens: the server's --token-secret (read from the environment or
    /// the --config file when not given here).
    #[arg(
        long,
        env = "SATSUMA_TOKEN_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub(crate) token_secret: Option<String>,

    /// The server's TOML configuration file, for token_secret, public_url and listen.
    #[arg(long, env = "SATSUMA_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// Base of the join link (default: the configured public_url, else
    /// http://localhost:PORT/ of the configured listen address).
    #[arg(long, env = "SATSUMA_PUBLIC_URL", value_name = "URL")]
    pub(crate) public_url: Option<String>,

    /// Print one JSON object {token, expires_at, url} instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Mints the token `args` describe, with the secret and link base from `args` over `file`.
pub(crate) fn create(args: &CreateArgs, file: &FileSettings, now: u64) -> anyhow::Result<Minted> {
    let Some(secret) = args.token_secret.clone().or(file.token_secret.clone()) else {
        bail!(
            "no token secret: give --token-secret or SATSUMA_TOKEN_SECRET (the server's), or \
             --config with token_secret"
        );
    };
    check_secret("token_secret", &secret).map_err(anyhow::Error::msg)?;
    let base = match args.public_url.clone().or(file.public_url.clone()) {
        Some(url) => url,
        None => {
            let port = file.listen.map_or_else(
                || {
                    DEFAULT_LISTEN
                        .rsplit(':')
                        .next()
                        .unwrap_or("8080")
                        .to_owned()
                },
                |a| a.port().to_string(),
            );
            format!("http://localhost:{port}/")
        }
    };
    let request = JoinRequest {
        room: &args.room,
        identity: &args.identity,
        name: args.name.as_deref(),
        ttl_s: args.ttl,
        perms: Permissions {
            publish: !args.no_publish,
            subscribe: !args.no_subscribe,
            host: args.host,
        },
        recorder: args.recorder,
    };
    mint(&TokenKeys::new(secret.as_bytes(), 0), &request, &base, now).map_err(anyhow::Error::msg)
}

/// Runs `satsuma token create`; prints the token and the link.
pub(crate) fn run(cmd: &TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::Create(args) = cmd;
    let file = match &args.config {
        Some(path) => FileSettings::load(path)?,
        None => FileSettings::default(),
    };
    let now = unix_now();
    let minted = create(args, &file, now)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"token": minted.token, "expires_at": minted.expires_at, "url": minted.url})
        );
    } else {
        println!("{}", minted.token);
        println!();
        println!(
            "Join link (valid for {} s, until Unix time {}):",
            minted.expires_at - now,
            minted.expires_at
        );
        println!("    {}", minted.url);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::settings::{Cli, Command};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn args(extra: &[&str]) -> CreateArgs {
        let mut all = vec![
            "satsuma",
            "token",
            "create",
            "--room",
            "standup",
            "--identity",
            "alice",
        ];
        all.extend_from_slice(extra);
        match Cli::try_parse_from(all).unwrap().command {
            Some(Command::Token(TokenCommand::Create(a))) => a,
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_s("90").unwrap(), 90);
        assert_eq!(parse_duration_s("90s").unwrap(), 90);
        assert_eq!(parse_duration_s("15m").unwrap(), 900);
        assert_eq!(parse_duration_s("1h").unwrap(), 3600);
        assert_eq!(parse_duration_s("2d").unwrap(), 172_800);
        assert!(parse_duration_s("1w").is_err());
        assert!(parse_duration_s("h").is_err());
        assert!(parse_duration_s("-1h").is_err());
    }

    #[test]
    fn mints_a_token_the_server_accepts_with_the_grants_asked_for() {
        let a = args(&[
            "--host",
            "--ttl",
            "1h",
            "--no-publish",
            "--name",
            "Alice",
            "--token-secret",
            SECRET,
        ]);
        let m = create(&a, &FileSettings::default(), 1_000).unwrap();
        assert_eq!(m.expires_at, 4_600);
        assert_eq!(m.url, format!("http://localhost:8080/#token={}", m.token));
        // Check with the server's own verifier (and a clock at mint time + 10 s).
        let keys = TokenKeys::new(SECRET.as_bytes(), 0);
        let now = unix_now();
        let fresh = create(&a, &FileSettings::default(), now).unwrap();
        let c = keys.verify(&fresh.token, "standup").unwrap();
        assert_eq!(c.sub, "alice");
        assert_eq!(c.name, "Alice");
        assert_eq!(
            c.permissions(),
            Permissions {
                publish: false,
                subscribe: true,
                host: true
            }
        );
        assert!(
            keys.verify(&m.token, "standup").is_err(),
            "minted in 1970: expired"
        );
    }

    #[test]
    fn secret_and_link_come_from_the_config_file() {
        let file: FileSettings = toml::from_str(&format!(
            "token_secret = \"{SECRET}\"\npublic_url = \"https://meet.example.com/\"\n"
        ))
        .unwrap();
        let m = create(&args(&[]), &file, unix_now()).unwrap();
        assert!(
            m.url.starts_with("https://meet.example.com/#token="),
            "{}",
            m.url
        );
        let file: FileSettings = toml::from_str(&format!(
            "token_secret = \"{SECRET}\"\nlisten = \"0.0.0.0:9000\"\n"
        ))
        .unwrap();
        let m = create(&args(&[]), &file, unix_now()).unwrap();
        assert!(
            m.url.starts_with("http://localhost:9000/#token="),
            "{}",
            m.url
        );
    }

    #[test]
    fn bad_input_is_refused() {
        let none = create(&args(&[]), &FileSettings::default(), 0).unwrap_err();
        assert!(none.to_string().contains("token secret"), "{none}");
        let short = create(
            &args(&["--token-secret", "short"]),
            &FileSettings::default(),
            0,
        )
        .unwrap_err();
        assert!(short.to_string().contains("token_secret"), "{short}");
        let long = create(
            &args(&["--token-secret", SECRET, "--ttl", "2d"]),
            &FileSettings::default(),
            0,
        )
        .unwrap_err();
        assert!(long.to_string().contains("ttl"), "{long}");
        let mut bad_room = args(&["--token-secret", SECRET]);
        bad_room.room = "no spaces".into();
        assert!(create(&bad_room, &FileSettings::default(), 0).is_err());
    }
}
