//! `kiln admin`: operator accounts and their API tokens, from the command
//! line on the Kiln host.
//!
//! Whoever runs these commands can read the data directory and the key
//! file, so they already own this installation: they act as its owner
//! without signing in, and every change is recorded in the audit trail
//! under their OS user name. Remote administration goes through the admin
//! API (`kiln serve`), which requires a session or an API token.

use crate::output::say;
use std::path::Path;

use clap::Subcommand;
use kiln_access::{Access, AccessError, Role, Settings};
use kiln_store::Store;

use crate::trail::Trail;
use crate::{Failure, key_provider, open, usage};

#[derive(Debug, Subcommand)]
pub(crate) enum AdminCommand {
    /// Operator accounts
    #[command(subcommand)]
    User(UserCommand),
    /// API tokens for the admin API
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum UserCommand {
    /// Create an account; its password (and MFA enrollment URI) are shown once
    Add {
        name: String,
        /// owner, security, developer, auditor or support
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Give a second factor to a role that does not require one
        #[arg(long)]
        mfa: bool,
    },
    /// List accounts: name, role, MFA, state
    List,
    /// Change an account's role (its sessions end)
    SetRole {
        name: String,
        #[arg(value_parser = parse_role)]
        role: Role,
    },
    /// Disable an account: no sign-in; its sessions and tokens end now
    Disable { name: String },
    /// Give an account a new TOTP secret (its sessions and tokens end)
    ResetMfa { name: String },
    /// Give an account a new generated password, shown once (its sessions end)
    ResetPassword { name: String },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a token for an operator; the secret is shown once
    Create {
        /// What the token is for, e.g. "ci"
        name: String,
        /// Whose token it is
        #[arg(long)]
        operator: String,
        /// A scope the token carries (repeat); `admin` means all of the operator's role
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Days until it expires (at most 90)
        #[arg(long, default_value_t = 30)]
        days: i64,
    },
    /// List an operator's tokens (never their secrets, which are not stored)
    List {
        #[arg(long)]
        operator: String,
    },
    /// Revoke a token by its id
    Revoke { id: i64 },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

impl From<AccessError> for Failure {
    fn from(e: AccessError) -> Self {
        let code = match e {
            AccessError::Invalid(_) | AccessError::UnknownOperator(_) | AccessError::Forbidden(_) => 2,
            _ => 1,
        };
        Failure { code, message: e.to_string() }
    }
}

async fn access(data_dir: &Path, store: &Store) -> Result<Access, Failure> {
    let provider = key_provider(data_dir, store).await?;
    let sealed = kiln_kvs::Kvs::new(store.clone(), provider);
    Ok(Access::new(store.clone(), sealed, Settings::default()))
}

pub(crate) async fn run(data_dir: &Path, command: AdminCommand) -> Result<(), Failure> {
    let store = open(data_dir).await?;
    let access = access(data_dir, &store).await?;
    let trail = Trail::open(data_dir, &store).await?;
    let result = match command {
        AdminCommand::User(command) => user(&access, &trail, command).await,
        AdminCommand::Token(command) => token(&access, &trail, command).await,
    };
    trail.checkpoint(&store).await;
    result
}

async fn user(access: &Access, trail: &Trail, command: UserCommand) -> Result<(), Failure> {
    match command {
        UserCommand::Add { name, role, mfa } => {
            let account = access.add_operator(&name, role, mfa, trail.audit()).await?;
            say!("Created {} ({}).", account.name, account.role);
            say!("Password (shown once): {}", account.password.as_str());
            match &account.totp_uri {
                Some(uri) => {
                    say!("Second factor: add this to an authenticator app (shown once):");
                    say!("  {}", uri.as_str());
                }
                None => say!("No second factor (the {} role does not require one).", account.role),
            }
        }
        UserCommand::List => {
            let rows = access.operators().await?;
            say!("{:<24} {:<10} {:<4} {:<10} CREATED (UTC)", "NAME", "ROLE", "MFA", "STATE");
            for op in rows {
                let state = if op.disabled_at.is_some() {
                    "disabled"
                } else if op.locked_until.is_some_and(|t| t > kiln_store::now_millis()) {
                    "locked"
                } else {
                    "active"
                };
                let mfa = if op.mfa_enrolled { "yes" } else { "no" };
                say!(
                    "{:<24} {:<10} {:<4} {:<10} {}",
                    op.name,
                    op.role,
                    mfa,
                    state,
                    crate::output::utc(op.created_at)
                );
            }
        }
        UserCommand::SetRole { name, role } => {
            access.set_role(&name, role, trail.audit()).await?;
            say!("{name} is now {role}; their sessions have ended.");
        }
        UserCommand::Disable { name } => {
            access.disable(&name, trail.audit()).await?;
            say!("Disabled {name}; their sessions and tokens have ended.");
        }
        UserCommand::ResetMfa { name } => {
            let uri = access.reset_mfa(&name, trail.audit()).await?;
            say!("New second factor for {name} (shown once); their sessions and tokens have ended:");
            say!("  {}", uri.as_str());
        }
        UserCommand::ResetPassword { name } => {
            let password = generated_password()?;
            access.set_password(&name, &password, trail.audit()).await?;
            say!("New password for {name} (shown once): {}", password.as_str());
        }
    }
    Ok(())
}

fn generated_password() -> Result<zeroize::Zeroizing<String>, Failure> {
    use base64::Engine;
    let mut raw = zeroize::Zeroizing::new([0u8; 18]);
    kiln_crypto::fill_random(raw.as_mut()).map_err(|e| Failure { code: 1, message: e.to_string() })?;
    Ok(zeroize::Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref())))
}

async fn token(access: &Access, trail: &Trail, command: TokenCommand) -> Result<(), Failure> {
    const DAY: i64 = 24 * 3600 * 1000;
    match command {
        TokenCommand::Create { name, operator, scopes, days } => {
            if !(1..=90).contains(&days) {
                return Err(usage("--days is between 1 and 90"));
            }
            let principal = access.operator_principal(&operator).await?;
            let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
            let (id, secret) =
                access.create_token(&principal, &name, &scopes, days * DAY, trail.audit()).await?;
            say!("Token {id} for {operator} ({}), expires in {days} days.", scopes.join(", "));
            say!("Secret (shown once; Kiln keeps only its hash): {}", secret.as_str());
        }
        TokenCommand::List { operator } => {
            say!("{:<6} {:<20} {:<32} {:<20} STATE", "ID", "NAME", "SCOPES", "EXPIRES (UTC)");
            let now = kiln_store::now_millis();
            for t in access.tokens(&operator).await? {
                let scopes: Vec<String> = serde_json::from_str(&t.scopes).unwrap_or_default();
                let state = if t.revoked_at.is_some() {
                    "revoked"
                } else if t.expires_at <= now {
                    "expired"
                } else {
                    "active"
                };
                say!(
                    "{:<6} {:<20} {:<32} {:<20} {state}",
                    t.id,
                    t.name,
                    scopes.join(","),
                    crate::output::utc(t.expires_at)
                );
            }
        }
        TokenCommand::Revoke { id } => {
            let host = Access::host_principal(&crate::trail::cli_user());
            access.revoke_token(&host, id, trail.audit()).await?;
            say!("Revoked token {id}.");
        }
    }
    Ok(())
}
