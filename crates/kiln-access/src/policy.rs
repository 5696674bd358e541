//! Who may do what: every operation an operator can ask for, every role,
//! and the one table that joins them. Every route and command asks
//! [`authorize`]; nothing else grants anything.
//!
//! The first rule is a deny that no role, scope or table row can override:
//! operations that would return customer data decrypted — app storage,
//! secrets, tokens, variable values — are refused for everyone. Kiln has no
//! route or command that performs them; they are listed so that the refusal
//! is explicit and tested, and so that a future route that tried to
//! perform them would have to be authorized as one and be refused.

use std::fmt;
use std::str::FromStr;

/// Operator roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Runs the installation: operators, keys, configuration, apps.
    Owner,
    /// Security team: audit, alerts, incidents, key rotation.
    Security,
    /// Ships apps: deploy, install, upgrade, rollback, variables.
    Developer,
    /// Reads the audit trail and nothing else that changes.
    Auditor,
    /// Sees what is installed where, to help customers; changes nothing.
    Support,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Owner, Role::Security, Role::Developer, Role::Auditor, Role::Support];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Security => "security",
            Role::Developer => "developer",
            Role::Auditor => "auditor",
            Role::Support => "support",
        }
    }

    /// Roles that can change what runs or who can act must sign in with a
    /// second factor.
    pub fn requires_mfa(self) -> bool {
        matches!(self, Role::Owner | Role::Security | Role::Developer)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
            format!("unknown role {s:?}; roles are {}", names.join(", "))
        })
    }
}

/// Everything an operator can ask Kiln to do (or, for the data-access
/// group, might try to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// Their own account: who am I, sign out.
    SelfRead,
    /// Their own API tokens: list, create within their role, revoke.
    SelfTokens,
    OperatorsRead,
    OperatorsManage,
    AppsRead,
    AppsDeploy,
    AppsInstall,
    /// Names of variables and whether they are encrypted; never values.
    VariablesRead,
    VariablesWrite,
    KeysRotate,
    AuditRead,
    AuditExport,
    AlertsRead,
    AlertsManage,
    ConfigRead,
    ConfigWrite,
    /// Decrypted app storage (KVS, entity store). Denied to every role.
    AppDataRead,
    /// Decrypted app secrets. Denied to every role.
    SecretsRead,
    /// OAuth tokens and other credentials Kiln holds. Denied to every role.
    CredentialsRead,
    /// Values of variables (encrypted or not). Denied to every role.
    VariableValuesRead,
}

impl Operation {
    pub const ALL: [Operation; 20] = [
        Operation::SelfRead,
        Operation::SelfTokens,
        Operation::OperatorsRead,
        Operation::OperatorsManage,
        Operation::AppsRead,
        Operation::AppsDeploy,
        Operation::AppsInstall,
        Operation::VariablesRead,
        Operation::VariablesWrite,
        Operation::KeysRotate,
        Operation::AuditRead,
        Operation::AuditExport,
        Operation::AlertsRead,
        Operation::AlertsManage,
        Operation::ConfigRead,
        Operation::ConfigWrite,
        Operation::AppDataRead,
        Operation::SecretsRead,
        Operation::CredentialsRead,
        Operation::VariableValuesRead,
    ];

    /// The API-token scope that covers this operation.
    pub fn scope(self) -> &'static str {
        match self {
            Operation::SelfRead | Operation::SelfTokens => "self",
            Operation::OperatorsRead => "operators:read",
            Operation::OperatorsManage => "operators:write",
            Operation::AppsRead | Operation::VariablesRead => "apps:read",
            Operation::AppsDeploy | Operation::AppsInstall | Operation::VariablesWrite => "apps:write",
            Operation::KeysRotate => "keys:write",
            Operation::AuditRead | Operation::AuditExport => "audit:read",
            Operation::AlertsRead => "alerts:read",
            Operation::AlertsManage => "alerts:write",
            Operation::ConfigRead => "config:read",
            Operation::ConfigWrite => "config:write",
            Operation::AppDataRead
            | Operation::SecretsRead
            | Operation::CredentialsRead
            | Operation::VariableValuesRead => "data:read",
        }
    }

    /// Operations that would hand customer data to staff.
    pub fn reads_customer_data(self) -> bool {
        matches!(
            self,
            Operation::AppDataRead
                | Operation::SecretsRead
                | Operation::CredentialsRead
                | Operation::VariableValuesRead
        )
    }
}

/// Every scope a token can carry (`data:read` is not one).
pub const SCOPES: [&str; 12] = [
    "self",
    "operators:read",
    "operators:write",
    "apps:read",
    "apps:write",
    "keys:write",
    "audit:read",
    "alerts:read",
    "alerts:write",
    "config:read",
    "config:write",
    "admin",
];

/// The table: which roles may perform which operation. Read it as the
/// policy; a change here is a change to who can do what.
fn table(op: Operation) -> &'static [Role] {
    use Role::*;
    match op {
        Operation::SelfRead | Operation::SelfTokens => &[Owner, Security, Developer, Auditor, Support],
        Operation::OperatorsRead => &[Owner, Security, Auditor],
        Operation::OperatorsManage => &[Owner],
        Operation::AppsRead => &[Owner, Security, Developer, Auditor, Support],
        Operation::AppsDeploy | Operation::AppsInstall => &[Owner, Developer],
        Operation::VariablesRead => &[Owner, Developer, Security],
        Operation::VariablesWrite => &[Owner, Developer],
        Operation::KeysRotate => &[Owner, Security],
        Operation::AuditRead | Operation::AuditExport => &[Owner, Security, Auditor],
        Operation::AlertsRead => &[Owner, Security, Auditor],
        Operation::AlertsManage => &[Owner, Security],
        Operation::ConfigRead => &[Owner, Security, Auditor],
        Operation::ConfigWrite => &[Owner],
        // Never reached (the deny rule comes first); empty so that even
        // without it nobody would be allowed.
        Operation::AppDataRead
        | Operation::SecretsRead
        | Operation::CredentialsRead
        | Operation::VariableValuesRead => &[],
    }
}

/// How a request proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A browser session (cookie) or the local command line on the host.
    Session,
    /// An API token limited to these scopes (`admin`: every scope the role has).
    Token { scopes: Vec<String> },
}

/// A decision and its reason, for the response and the audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// May `role`, presenting `credential`, perform `op`?
pub fn authorize(role: Role, credential: &Credential, op: Operation) -> Decision {
    if op.reads_customer_data() {
        return Decision::Deny(format!(
            "{op:?} would return customer data; no role can read decrypted app data, secrets, credentials \
             or variable values"
        ));
    }
    if !table(op).contains(&role) {
        return Decision::Deny(format!("the {role} role may not perform {op:?}"));
    }
    if let Credential::Token { scopes } = credential
        && !scopes.iter().any(|s| s == op.scope() || s == "admin")
    {
        return Decision::Deny(format!("this token's scopes do not include {}", op.scope()));
    }
    Decision::Allow
}

/// The scopes `role` could use: what a token of that role may ask for.
pub fn scopes_for(role: Role) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Operation::ALL
        .into_iter()
        .filter(|op| authorize(role, &Credential::Session, *op).is_allowed())
        .map(Operation::scope)
        .collect();
    out.push("admin");
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_role_and_no_token_reads_customer_data() {
        let all_scopes = Credential::Token { scopes: SCOPES.iter().map(|s| (*s).to_owned()).collect() };
        for role in Role::ALL {
            for op in Operation::ALL.into_iter().filter(|op| op.reads_customer_data()) {
                assert!(!authorize(role, &Credential::Session, op).is_allowed(), "{role} {op:?}");
                assert!(!authorize(role, &all_scopes, op).is_allowed(), "{role} {op:?} by token");
            }
        }
        assert!(!SCOPES.contains(&"data:read"));
    }

    #[test]
    fn the_table_is_what_the_roles_promise() {
        let allowed = |role: Role| -> Vec<Operation> {
            Operation::ALL
                .into_iter()
                .filter(|op| authorize(role, &Credential::Session, *op).is_allowed())
                .collect()
        };
        use Operation::*;
        assert_eq!(
            allowed(Role::Owner),
            [
                SelfRead,
                SelfTokens,
                OperatorsRead,
                OperatorsManage,
                AppsRead,
                AppsDeploy,
                AppsInstall,
                VariablesRead,
                VariablesWrite,
                KeysRotate,
                AuditRead,
                AuditExport,
                AlertsRead,
                AlertsManage,
                ConfigRead,
                ConfigWrite
            ]
        );
        assert_eq!(
            allowed(Role::Security),
            [
                SelfRead,
                SelfTokens,
                OperatorsRead,
                AppsRead,
                VariablesRead,
                KeysRotate,
                AuditRead,
                AuditExport,
                AlertsRead,
                AlertsManage,
                ConfigRead
            ]
        );
        assert_eq!(
            allowed(Role::Developer),
            [SelfRead, SelfTokens, AppsRead, AppsDeploy, AppsInstall, VariablesRead, VariablesWrite]
        );
        assert_eq!(
            allowed(Role::Auditor),
            [SelfRead, SelfTokens, OperatorsRead, AppsRead, AuditRead, AuditExport, AlertsRead, ConfigRead]
        );
        assert_eq!(allowed(Role::Support), [SelfRead, SelfTokens, AppsRead]);
    }

    #[test]
    fn a_token_is_bounded_by_its_scopes_and_its_role() {
        let read_only = Credential::Token { scopes: vec!["apps:read".into()] };
        assert!(authorize(Role::Developer, &read_only, Operation::AppsRead).is_allowed());
        assert!(!authorize(Role::Developer, &read_only, Operation::AppsDeploy).is_allowed());
        // `admin` widens a token to its role, never past it.
        let admin = Credential::Token { scopes: vec!["admin".into()] };
        assert!(authorize(Role::Developer, &admin, Operation::AppsDeploy).is_allowed());
        assert!(!authorize(Role::Developer, &admin, Operation::KeysRotate).is_allowed());
        assert!(!authorize(Role::Support, &admin, Operation::AuditRead).is_allowed());
        assert_eq!(scopes_for(Role::Support), ["admin", "apps:read", "self"]);
    }

    #[test]
    fn roles_parse_and_privileged_ones_need_mfa() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert!("root".parse::<Role>().unwrap_err().contains("owner, security, developer, auditor, support"));
        let mfa: Vec<Role> = Role::ALL.into_iter().filter(|r| r.requires_mfa()).collect();
        assert_eq!(mfa, [Role::Owner, Role::Security, Role::Developer]);
    }
}
