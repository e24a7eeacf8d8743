//! `satsuma-coordinator token create`: mints a join token locally with the coordinator's JWT
//! secret, issuer and audience (from flags, `SATSUMA_COORD_*` env or the `--config` file, as the
//! server reads them) and prints it with a `#token=` join link.

use std::path::PathBuf;

use clap::Parser;

use crate::auth::{Claims, MAX_DISPLAY_NAME_CHARS, TokenKeys, check_secret, unix_now};
use crate::protocol::Permissions;

/// `satsuma-coordinator token ...`
#[derive(Debug, Clone, Parser)]
#[command(
    name = "satsuma-coordinator token",
    about = "Join tokens: `create` mints one with the coordinator's JWT secret"
)]
pub struct TokenCli {
    /// What to do.
    #[command(subcommand)]
    pub command: TokenCommand,
}

/// `satsuma-coordinator token ...` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokenCommand {
    /// Mint a join token with the coordinator's JWT secret and print it with a join link.
    ///
    /// The token admits one identity to one room with the given grants until it expires. The
    /// link carries it after `#token=`, which browsers never send to the server. Anyone holding
    /// it can join as that identity until it expires: send it over a channel you trust.
    Create(CreateArgs),
}

/// Options of `satsuma-coordinator token create`.
#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    /// Room the token admits to (1-64 of A-Z a-z 0-9 . _ -).
    #[arg(long, value_name = "ROOM")]
    pub room: String,
    /// Identity of the participant (the token's `sub`): your app's user id or e-mail address.
    #[arg(long, value_name = "ID")]
    pub identity: String,
    /// Display name shown to the others (default: the identity; at most 64 characters).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Grant host rights (mute, remove, lock, cap, invite links; joins locked or full rooms).
    #[arg(long)]
    pub host: bool,
    /// Lifetime: seconds, or a number with s, m, h or d (e.g. 90m, 1h); at most 24h
    /// [default: 6h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_s)]
    pub ttl: Option<u64>,
    /// Do not grant `publish` (watch and listen only).
    #[arg(long)]
    pub no_publish: bool,
    /// Do not grant `subscribe` (send only).
    #[arg(long)]
    pub no_subscribe: bool,
    /// Grant `recorder`: the holder joins as a visible recorder (every member sees
    /// "Recording by <name>"; it pulls, decrypts and stores every track). Give it only to the
    /// `satsuma-record` tool an operator runs.
    #[arg(long)]
    pub recorder: bool,
    /// The coordinator's TOML config file, for jwt_secret, jwt_issuer, jwt_audience, public_url.
    #[arg(long, env = "SATSUMA_COORD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The coordinator's JWT secret.
    #[arg(long, env = "SATSUMA_COORD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// The coordinator's issuer (iss) [default: satsuma].
    #[arg(long, env = "SATSUMA_COORD_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The coordinator's audience (aud) [default: satsuma].
    #[arg(long, env = "SATSUMA_COORD_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Base of the join link (default: public_url of the config, else http://localhost:8080/).
    #[arg(long, env = "SATSUMA_COORD_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// Print one JSON object {token, expires_at, url} instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Parses `90`, `90s`, `15m`, `6h`, `1d` into seconds.
pub fn parse_duration_s(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 15m, 6h or 1d"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// A minted token and its link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    /// The join token.
    pub token: String,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
    /// Join link with `#token=`.
    pub url: String,
}

/// Mints the token `args` describe at time `now`.
pub fn create(args: &CreateArgs, now: u64) -> Result<Minted, String> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            toml::from_str::<crate::Cli>(&text)
                .map_err(|e| format!("bad config file {}: {e}", path.display()))?
        }
        None => crate::Cli::default(),
    };
    let secret = args
        .jwt_secret
        .clone()
        .or(file.jwt_secret)
        .ok_or("no JWT secret: give --jwt-secret, SATSUMA_COORD_JWT_SECRET or --config")?;
    check_secret("jwt_secret", &secret)?;
    let issuer = args
        .jwt_issuer
        .clone()
        .or(file.jwt_issuer)
        .unwrap_or_else(|| crate::auth::DEFAULT_ISSUER.to_owned());
    let audience = args
        .jwt_audience
        .clone()
        .or(file.jwt_audience)
        .unwrap_or_else(|| crate::auth::DEFAULT_AUDIENCE.to_owned());
    let base = args
        .public_url
        .clone()
        .or(file.public_url)
        .unwrap_or_else(|| "http://localhost:8080/".to_owned());
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
    mint(
        &TokenKeys::with_names(secret.as_bytes(), 0, &issuer, &audience),
        &request,
        &base,
        now,
    )
}

/// A join token asked for on a command line (`satsuma-coordinator token create`, and the
/// all-in-one's `satsuma token create`).
#[derive(Debug, Clone)]
pub struct JoinRequest<'a> {
    /// Room.
    pub room: &'a str,
    /// Identity (`sub`).
    pub identity: &'a str,
    /// Display name.
    pub name: Option<&'a str>,
    /// Lifetime in seconds (default as for `POST /api/v1/tokens`).
    pub ttl_s: Option<u64>,
    /// Grants.
    pub perms: Permissions,
    /// Also grant `recorder` (a visible recorder, see [`Claims::is_recorder`]).
    pub recorder: bool,
}

/// Checks `request` (room name, identity, name, lifetime) and mints it with `keys` at time
/// `now`; the join link is `base` with `#token=`.
///
/// # Errors
/// What is wrong with the request, or signing failed.
pub fn mint(
    keys: &TokenKeys,
    request: &JoinRequest<'_>,
    base: &str,
    now: u64,
) -> Result<Minted, String> {
    if !crate::valid_room_name(request.room) {
        return Err(format!(
            "invalid room name {:?}: 1-64 of A-Z a-z 0-9 . _ -",
            request.room
        ));
    }
    if request.identity.trim().is_empty() || request.identity.len() > 256 {
        return Err("identity must be 1-256 bytes".to_owned());
    }
    let name = request.name.unwrap_or_default().to_owned();
    if name.chars().count() > MAX_DISPLAY_NAME_CHARS {
        return Err(format!(
            "name must be at most {MAX_DISPLAY_NAME_CHARS} characters"
        ));
    }
    let ttl = request.ttl_s.unwrap_or(crate::access::TOKEN_DEFAULT_TTL_S);
    if ttl == 0 || ttl > crate::access::TOKEN_MAX_TTL_S {
        return Err(format!("ttl must be between 1 s and 24h, got {ttl} s"));
    }
    let mut perms = request.perms.to_names();
    if request.recorder {
        perms.push(crate::auth::RECORDER_PERM.to_owned());
    }
    let claims = Claims {
        sub: request.identity.to_owned(),
        room: request.room.to_owned(),
        name,
        perms,
        exp: now + ttl,
        iat: Some(now),
        ..Claims::default()
    };
    let token = keys.mint(&claims).map_err(|e| e.to_string())?;
    let url = format!("{}/#token={token}", base.trim_end_matches('/'));
    Ok(Minted {
        token,
        expires_at: now + ttl,
        url,
    })
}

/// Runs `satsuma-coordinator token ...` from the process arguments after `token`; returns the
/// text to print.
pub fn run(cli: &TokenCli) -> Result<String, String> {
    let TokenCommand::Create(args) = &cli.command;
    let now = unix_now();
    let m = create(args, now)?;
    Ok(if args.json {
        serde_json::json!({"token": m.token, "expires_at": m.expires_at, "url": m.url}).to_string()
    } else {
        format!(
            "{}\n\nJoin link (valid for {} s, until Unix time {}):\n    {}",
            m.token,
            m.expires_at - now,
            m.expires_at,
            m.url
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn args(extra: &[&str]) -> CreateArgs {
        let mut all = vec![
            "satsuma-coordinator token",
            "create",
            "--room",
            "standup",
            "--identity",
            "alice",
        ];
        all.extend_from_slice(extra);
        let TokenCommand::Create(a) = TokenCli::try_parse_from(all).unwrap().command;
        a
    }

    #[test]
    fn mints_what_the_server_accepts_with_its_issuer_and_audience() {
        let a = args(&[
            "--jwt-secret",
            SECRET,
            "--jwt-audience",
            "meet",
            "--host",
            "--ttl",
            "30m",
            "--public-url",
            "https://meet.example.com/",
        ]);
        let m = create(&a, unix_now()).unwrap();
        assert!(m.url.starts_with("https://meet.example.com/#token="));
        let keys = TokenKeys::with_names(SECRET.as_bytes(), 0, "satsuma", "meet");
        let c = keys.verify(&m.token, "standup").unwrap();
        assert!(c.permissions().host);
        assert!(!c.is_recorder());
        assert_eq!(c.exp - c.iat.unwrap(), 1800);
        let r = create(&args(&["--jwt-secret", SECRET, "--recorder"]), unix_now()).unwrap();
        let c = TokenKeys::new(SECRET.as_bytes(), 0)
            .verify(&r.token, "standup")
            .unwrap();
        assert!(c.is_recorder());
        assert!(c.perms.iter().any(|p| p == "subscribe"));
        // The default audience does not accept it.
        assert!(
            TokenKeys::new(SECRET.as_bytes(), 0)
                .verify(&m.token, "standup")
                .is_err()
        );
    }

    #[test]
    fn secret_from_the_config_file_and_refusals() {
        let dir = std::env::temp_dir().join(format!("coord-token-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, format!("jwt_secret = \"{SECRET}\"\n")).unwrap();
        let m = create(&args(&["--config", path.to_str().unwrap()]), unix_now()).unwrap();
        assert!(
            TokenKeys::new(SECRET.as_bytes(), 0)
                .verify(&m.token, "standup")
                .is_ok()
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            create(&args(&["--jwt-secret", "short"]), 0)
                .unwrap_err()
                .contains("jwt_secret")
        );
        assert!(create(&args(&["--jwt-secret", SECRET, "--ttl", "2d"]), 0).is_err());
        assert!(parse_duration_s("5x").is_err());
        assert_eq!(parse_duration_s("2h").unwrap(), 7200);
    }
}
