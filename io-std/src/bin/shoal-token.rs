//! `shoal-token`: the backend's side of connect tokens, for tests and examples.
//!
//! ```text
//! shoal-token key                       # a fresh backend key (hex), shared with the servers
//! shoal-token issue --key HEX --client-id 42 --server 203.0.113.5:4000 \
//!     --expires-in 300 --user-data team=blue
//!                                       # a token (hex) to hand to client 42
//! shoal-token inspect HEX               # what the client-visible part of a token says
//! ```
//!
//! A real backend calls `shoal_proto::token::issue` itself, after its own login.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shoal_proto::token::{issue, ConnectToken, TokenParams};

#[derive(Parser)]
#[command(about = "Issue Shoal connect tokens and backend keys")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prints a fresh random backend key (64 hex digits).
    Key,
    /// Prints a token (hex) for a client.
    Issue {
        /// The backend key (64 hex digits), as the servers' `TokenConfig::key`.
        #[arg(long)]
        key: String,
        /// The client id the servers will see.
        #[arg(long)]
        client_id: u64,
        /// A server the token is good for (repeat for up to 8).
        #[arg(long = "server", required = true)]
        servers: Vec<SocketAddr>,
        /// Seconds from now until the token expires.
        #[arg(long, default_value_t = 300)]
        expires_in: u64,
        /// User data for the server (up to 256 bytes).
        #[arg(long, default_value = "")]
        user_data: String,
        /// The application protocol id (`Config::protocol_id`).
        #[arg(long, default_value_t = shoal_proto::Config::default().protocol_id)]
        protocol_id: u32,
    },
    /// Prints the expiry of a token (the rest is sealed for the servers).
    Inspect {
        /// The token, as `issue` printed it.
        token: String,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shoal-token: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<String, String> {
    match cli.command {
        Command::Key => Ok(hex(&random32()?)),
        Command::Issue {
            key,
            client_id,
            servers,
            expires_in,
            user_data,
            protocol_id,
        } => {
            let key: [u8; 32] = unhex(&key)?
                .try_into()
                .map_err(|_| "the key must be 32 bytes (64 hex digits)".to_string())?;
            let now = shoal_std::clock::unix_time().as_secs();
            let token = issue(
                &key,
                &TokenParams {
                    protocol_id,
                    client_id,
                    expires_at: now.saturating_add(expires_in),
                    server_addresses: &servers,
                    user_data: user_data.as_bytes(),
                },
                &random32()?,
            )
            .map_err(|e| e.to_string())?;
            Ok(hex(&token.to_bytes()))
        }
        Command::Inspect { token } => {
            let token = ConnectToken::from_bytes(&unhex(&token)?)
                .ok_or_else(|| "not a connect token (wrong length)".to_string())?;
            Ok(format!("expires_at {} (Unix seconds)", token.expires_at()))
        }
    }
}

fn random32() -> Result<[u8; 32], String> {
    shoal_std::clock::os_secret_seed()
        .map(|s| s.0)
        .map_err(|e| e.to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    if s.len() % 2 != 0 {
        return Err("odd number of hex digits".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| format!("bad hex at {i}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_token_round_trips_through_hex() {
        let out = run(Cli {
            command: Command::Issue {
                key: "07".repeat(32),
                client_id: 9,
                servers: vec!["127.0.0.1:4000".parse().expect("addr")],
                expires_in: 60,
                user_data: "x".into(),
                protocol_id: 1,
            },
        })
        .expect("issues");
        let token = ConnectToken::from_bytes(&unhex(&out).expect("hex")).expect("a token");
        assert!(token.expires_at() > shoal_std::clock::unix_time().as_secs());
        assert!(run(Cli {
            command: Command::Inspect { token: out }
        })
        .expect("inspects")
        .starts_with("expires_at"));
        assert!(unhex("0").is_err() && unhex("zz").is_err());
    }
}
