//! The command line against a Kiln server's admin API (`--server URL`),
//! authenticated by an API token from `KILN_TOKEN` (never a flag, so it
//! stays out of shell history and process listings), over HTTPS verified
//! against `--server-ca` (or `KILN_SERVER_CA`), else the system's roots.
//!
//! Only commands the admin API serves run remotely; the others say that
//! they run on the Kiln host.

use crate::output::{say, say_raw};
use std::path::PathBuf;

use kiln_server::{HttpsClient, Method, Reply};

use crate::{AppArg, Command, EnvArg, Failure, VariablesCommand, usage};

/// Where the server is and how to trust it.
#[derive(Debug)]
pub(crate) struct Remote {
    client: HttpsClient,
    token: String,
}

/// The environment variable holding the API token.
pub(crate) const TOKEN_ENV: &str = "KILN_TOKEN";

impl Remote {
    pub(crate) fn new(server: &str, ca: Option<PathBuf>) -> Result<Remote, Failure> {
        let url = url::Url::parse(server).map_err(|e| usage(format!("--server {server:?}: {e}")))?;
        if url.scheme() != "https" {
            return Err(usage(format!("--server must be an https URL, not {server:?}")));
        }
        let host =
            url.host_str().ok_or_else(|| usage("--server has no host"))?.trim_matches(['[', ']']).to_owned();
        let port = url.port_or_known_default().unwrap_or(443);
        let addr = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let roots = match ca.or_else(|| std::env::var_os("KILN_SERVER_CA").map(PathBuf::from)) {
            Some(path) => {
                std::fs::read_to_string(&path).map_err(|e| usage(format!("{}: {e}", path.display())))?
            }
            None => kiln_crypto::tls::system_roots()
                .ok_or_else(|| usage("no system certificate bundle; pass --server-ca"))?,
        };
        let tls = kiln_crypto::tls::client_config(&roots).map_err(|e| usage(e.to_string()))?;
        let token = std::env::var(TOKEN_ENV).map_err(|_| {
            usage(format!(
                "--server needs an API token in {TOKEN_ENV} (create one with `kiln admin token create` on the host)"
            ))
        })?;
        Ok(Remote { client: HttpsClient::new(&addr, &host, tls), token })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Reply, Failure> {
        let auth = format!("Bearer {}", self.token);
        let body = body.map(|b| b.to_string());
        let reply = self
            .client
            .send(method, path, &[("authorization", auth.as_str())], body.as_deref().map(str::as_bytes))
            .await
            .map_err(|e| Failure { code: 1, message: format!("the server cannot be reached: {e}") })?;
        if reply.status.is_success() {
            return Ok(reply);
        }
        let message = field(&reply.json(), "error").as_str().map_or_else(|| reply.text(), str::to_owned);
        let code =
            if reply.status.is_client_error() && reply.status.as_u16() != 401 && reply.status.as_u16() != 403
            {
                2
            } else {
                1
            };
        Err(Failure { code, message: format!("the server answered {}: {message}", reply.status) })
    }
}

/// A JSON object's field, or null: never panics.
fn field<'a>(v: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    v.get(key).unwrap_or(&serde_json::Value::Null)
}

fn print_json(reply: &Reply) {
    match serde_json::from_slice::<serde_json::Value>(&reply.body) {
        Ok(v) => crate::output::json(&v),
        Err(_) => say_raw!("{}", reply.text()),
    }
}

/// `--app` as the API names it: the app id's UUID.
fn app_path(app: &AppArg, env: &EnvArg) -> Result<String, Failure> {
    let id = crate::app_id(&app.app)?;
    let uuid = id.as_str().rsplit('/').next().unwrap_or_default().to_owned();
    Ok(format!("/api/v1/apps/{uuid}/{}", env.environment))
}

/// Run `command` against the server.
pub(crate) async fn run(remote: &Remote, command: Command) -> Result<(), Failure> {
    use crate::admin::{AdminCommand, TokenCommand, UserCommand};
    use crate::{AuditCommand, ExportFormatArg};
    match command {
        Command::Versions(args) => {
            let reply = remote
                .call(Method::GET, &format!("{}/versions", app_path(&args.app, &args.env)?), None)
                .await?;
            print_json(&reply);
        }
        Command::Variables(VariablesCommand::List { env, app }) => {
            let reply =
                remote.call(Method::GET, &format!("{}/variables", app_path(&app, &env)?), None).await?;
            for v in reply.json().as_array().into_iter().flatten() {
                let how = if field(v, "encrypted").as_bool() == Some(true) {
                    "encrypted"
                } else {
                    "sealed at rest"
                };
                say!("{} ({how})", field(v, "name").as_str().unwrap_or_default());
            }
        }
        Command::Variables(VariablesCommand::Set { name, value, encrypt, env, app }) => {
            let path = format!("{}/variables/{name}", app_path(&app, &env)?);
            remote
                .call(Method::PUT, &path, Some(serde_json::json!({ "value": value, "encrypt": encrypt })))
                .await?;
            say!("Set {name} in {}.", env.environment);
        }
        Command::Variables(VariablesCommand::Unset { name, env, app }) => {
            remote.call(Method::DELETE, &format!("{}/variables/{name}", app_path(&app, &env)?), None).await?;
            say!("Removed {name}.");
        }
        Command::Audit(AuditCommand::Verify) => {
            let reply = remote.call(Method::POST, "/api/v1/audit/verify", None).await?;
            let report = reply.json();
            for p in field(&report, "problems").as_array().into_iter().flatten() {
                say!("PROBLEM {}", p.as_str().unwrap_or_default());
            }
            say!(
                "{} records, {} checkpoints in the database, {} in the server's checkpoint file: {}",
                field(&report, "records"),
                field(&report, "checkpoints"),
                field(&report, "fileCheckpoints"),
                if field(&report, "intact") == true { "intact" } else { "problems found" }
            );
            if field(&report, "intact") != true {
                return Err(Failure { code: 1, message: "the audit trail fails verification".into() });
            }
        }
        Command::Audit(AuditCommand::Export { format, after, output }) => {
            let format = match format {
                ExportFormatArg::Jsonl => "jsonl",
                ExportFormatArg::Ocsf => "ocsf",
            };
            let reply = remote
                .call(Method::GET, &format!("/api/v1/audit/export?format={format}&after={after}"), None)
                .await?;
            match output {
                Some(path) => std::fs::write(&path, &reply.body)
                    .map_err(|e| Failure { code: 1, message: format!("{}: {e}", path.display()) })?,
                None => say_raw!("{}", reply.text()),
            }
        }
        Command::Audit(AuditCommand::Alerts { .. }) => {
            print_json(&remote.call(Method::GET, "/api/v1/alerts", None).await?)
        }
        Command::Admin(AdminCommand::User(UserCommand::List)) => {
            print_json(&remote.call(Method::GET, "/api/v1/operators", None).await?);
        }
        Command::Admin(AdminCommand::User(UserCommand::Add { name, role, mfa })) => {
            let body = serde_json::json!({ "name": name, "role": role.as_str(), "mfa": mfa });
            print_json(&remote.call(Method::POST, "/api/v1/operators", Some(body)).await?);
        }
        Command::Admin(AdminCommand::User(UserCommand::SetRole { name, role })) => {
            let body = serde_json::json!({ "role": role.as_str() });
            remote.call(Method::PUT, &format!("/api/v1/operators/{name}/role"), Some(body)).await?;
            say!("{name} is now {role}; their sessions have ended.");
        }
        Command::Admin(AdminCommand::User(UserCommand::Disable { name })) => {
            remote.call(Method::POST, &format!("/api/v1/operators/{name}/disable"), None).await?;
            say!("Disabled {name}; their sessions and tokens have ended.");
        }
        Command::Admin(AdminCommand::Token(TokenCommand::List { .. })) => {
            print_json(&remote.call(Method::GET, "/api/v1/tokens", None).await?);
        }
        Command::Admin(AdminCommand::Token(TokenCommand::Revoke { id })) => {
            remote.call(Method::DELETE, &format!("/api/v1/tokens/{id}"), None).await?;
            say!("Revoked token {id}.");
        }
        Command::Admin(AdminCommand::Token(TokenCommand::Create { .. })) => {
            return Err(usage(
                "tokens are created from a signed-in session (the web console) or on the Kiln host, not with a token",
            ));
        }
        other => {
            return Err(usage(format!(
                "{} runs on the Kiln host, not through --server",
                format!("{other:?}").split(['(', ' ', '{']).next().unwrap_or("this command").to_lowercase()
            )));
        }
    }
    Ok(())
}
