//! Operator sign-in, MFA, lockout, sessions and API tokens on every storage
//! backend, with a clock the tests move.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use kiln_access::*;
use kiln_audit::testing::{AUDITOR, audit};
use kiln_crypto::keys::EnvKeyProvider;
use kiln_kvs::Kvs;
use kiln_store::testing::{TestStore, each_backend};

const MINUTE: i64 = 60_000;
/// 2026-11-29 09:00:00 UTC, in the middle of a TOTP step.
const START: i64 = 1_795_942_815_000;

struct Fixture {
    access: Access,
    clock: Arc<AtomicI64>,
}

impl Fixture {
    fn new(t: &TestStore) -> Self {
        let clock = Arc::new(AtomicI64::new(START));
        let c = clock.clone();
        let now: kiln_kvs::Clock = Arc::new(move || c.load(Ordering::SeqCst));
        let key = base64_key();
        let provider = Arc::new(EnvKeyProvider::from_value(&format!("k1:{key}")).unwrap());
        let sealed = Kvs::with_clock(t.store.clone(), provider, now.clone());
        Fixture { access: Access::with_clock(t.store.clone(), sealed, Settings::default(), now), clock }
    }

    fn advance(&self, ms: i64) {
        self.clock.fetch_add(ms, Ordering::SeqCst);
    }

    fn now(&self) -> i64 {
        self.clock.load(Ordering::SeqCst)
    }

    /// The code an authenticator app shows for `uri` at `at` (millis).
    fn code_at(uri: &str, at: i64) -> String {
        let secret = uri.split("secret=").nth(1).unwrap().split('&').next().unwrap();
        let secret = kiln_crypto::otp::base32_decode(secret).unwrap();
        format!("{:06}", kiln_crypto::otp::code(&secret, kiln_crypto::otp::step_at((at / 1000) as u64)))
    }

    fn code(&self, uri: &str) -> String {
        Fixture::code_at(uri, self.now())
    }
}

fn base64_key() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([5u8; 32])
}

async fn trail(t: &TestStore) -> Vec<(String, String, String)> {
    let mut tx = t.store.begin().await.unwrap();
    tx.audit_records(0, 10_000).await.unwrap().into_iter().map(|r| (r.action, r.target, r.outcome)).collect()
}

#[tokio::test]
async fn a_privileged_sign_in_needs_a_fresh_code_and_each_code_works_once() {
    for t in each_backend().await.unwrap() {
        let f = Fixture::new(&t);
        let dev = f.access.add_operator("dana", Role::Developer, false, audit()).await.unwrap();
        let uri = dev.totp_uri.as_ref().expect("developers get a second factor").to_string();
        assert!(uri.starts_with("otpauth://totp/Kiln:dana?secret="), "{uri}");

        let err = f.access.login("dana", &dev.password, None, "10.0.0.1", audit()).await.unwrap_err();
        assert!(matches!(err, AccessError::BadCredentials), "{}: {err}", t.name);
        let err =
            f.access.login("dana", &dev.password, Some("000000"), "10.0.0.1", audit()).await.unwrap_err();
        assert!(matches!(err, AccessError::BadCredentials), "{}: {err}", t.name);

        let code = f.code(&uri);
        let (session, who) =
            f.access.login("dana", &dev.password, Some(&code), "10.0.0.1", audit()).await.unwrap();
        assert_eq!(who.role, Role::Developer);
        assert_eq!(f.access.session(&session.0).await.unwrap().name, "dana");

        // The same code again, even within its step, is a replay.
        let err = f.access.login("dana", &dev.password, Some(&code), "10.0.0.1", audit()).await.unwrap_err();
        assert!(matches!(err, AccessError::BadCredentials), "{}: {err}", t.name);
        // So is the previous step's code once a later one was used.
        let previous = Fixture::code_at(&uri, f.now() - 30_000);
        let err =
            f.access.login("dana", &dev.password, Some(&previous), "10.0.0.1", audit()).await.unwrap_err();
        assert!(matches!(err, AccessError::BadCredentials), "{}: {err}", t.name);
        // The next step's code works (clock drift of one step is allowed).
        f.advance(30_000);
        let next = f.code(&uri);
        f.access.login("dana", &dev.password, Some(&next), "10.0.0.1", audit()).await.unwrap();
        // A wrong password with a right code is still refused.
        f.advance(30_000);
        let right = f.code(&uri);
        assert!(
            f.access.login("dana", "wrong-password-here", Some(&right), "10.0.0.1", audit()).await.is_err()
        );

        let refused: Vec<_> =
            trail(&t).await.into_iter().filter(|(a, _, _)| a == "operator.login_failed").collect();
        assert_eq!(refused.len(), 5, "{}: {refused:?}", t.name);
        assert!(refused.iter().all(|(_, target, outcome)| target == "operator:dana" && outcome == "denied"));
    }
}

#[tokio::test]
async fn roles_without_mfa_sign_in_with_a_password_and_unknown_names_are_not_recorded_as_typed() {
    for t in each_backend().await.unwrap() {
        let f = Fixture::new(&t);
        let aud = f.access.add_operator("audrey", Role::Auditor, false, audit()).await.unwrap();
        assert!(aud.totp_uri.is_none());
        let (_, who) = f.access.login("audrey", &aud.password, None, "10.0.0.2", audit()).await.unwrap();
        assert_eq!(who.role, Role::Auditor);

        // Someone types their password into the name field.
        let typed = "hunter2-my-password";
        assert!(f.access.login(typed, "x", None, "10.0.0.2", audit()).await.is_err());
        let records = trail(&t).await;
        let last = records.last().unwrap();
        assert_eq!(last.0, "operator.login_failed");
        assert!(last.1.starts_with("operator:unknown#"), "{}: {last:?}", t.name);
        assert!(!format!("{records:?}").contains(typed), "{}", t.name);
        assert_eq!(last.1, format!("operator:unknown#{}", AUDITOR.fingerprint(typed.as_bytes())));
    }
}

#[tokio::test]
async fn repeated_failures_lock_the_account_and_then_the_address() {
    for t in each_backend().await.unwrap() {
        let f = Fixture::new(&t);
        let sup = f.access.add_operator("sam", Role::Support, false, audit()).await.unwrap();
        for i in 0..4 {
            let err = f.access.login("sam", "not-the-password", None, "10.0.0.3", audit()).await.unwrap_err();
            assert!(matches!(err, AccessError::BadCredentials), "{}: attempt {i}: {err}", t.name);
        }
        let err = f.access.login("sam", "not-the-password", None, "10.0.0.3", audit()).await.unwrap_err();
        assert!(matches!(err, AccessError::Locked), "{}: {err}", t.name);
        // Locked: the right password does not help, from anywhere.
        let err = f.access.login("sam", &sup.password, None, "10.9.9.9", audit()).await.unwrap_err();
        assert!(matches!(err, AccessError::Locked), "{}: {err}", t.name);
        f.advance(14 * MINUTE);
        assert!(matches!(
            f.access.login("sam", &sup.password, None, "10.9.9.9", audit()).await.unwrap_err(),
            AccessError::Locked
        ));
        f.advance(2 * MINUTE);
        f.access.login("sam", &sup.password, None, "10.9.9.9", audit()).await.unwrap();
        // Success resets the count: four more failures do not lock.
        for _ in 0..4 {
            assert!(matches!(
                f.access.login("sam", "nope-nope-nope", None, "10.9.9.9", audit()).await.unwrap_err(),
                AccessError::BadCredentials
            ));
        }

        // One address guessing many names is refused after 20 failures in
        // 15 minutes, whatever name it tries; other addresses are not.
        f.advance(16 * MINUTE);
        for i in 0..20 {
            let _ = f.access.login(&format!("guess{i}"), "x", None, "203.0.113.7", audit()).await;
        }
        let err = f.access.login("sam", &sup.password, None, "203.0.113.7", audit()).await.unwrap_err();
        assert!(matches!(err, AccessError::Throttled), "{}: {err}", t.name);
        f.access.login("sam", &sup.password, None, "198.51.100.1", audit()).await.unwrap();
        f.advance(16 * MINUTE);
        f.access.login("sam", &sup.password, None, "203.0.113.7", audit()).await.unwrap();
    }
}

#[tokio::test]
async fn sessions_end_when_idle_at_their_absolute_limit_and_when_revoked() {
    for t in each_backend().await.unwrap() {
        let f = Fixture::new(&t);
        let sup = f.access.add_operator("sue", Role::Support, false, audit()).await.unwrap();
        let login = || f.access.login("sue", &sup.password, None, "10.0.0.4", audit());

        // Idle: 15 minutes without use ends it; use keeps it alive.
        let (s, _) = login().await.unwrap();
        f.advance(14 * MINUTE);
        f.access.session(&s.0).await.unwrap();
        f.advance(14 * MINUTE);
        f.access.session(&s.0).await.unwrap();
        f.advance(15 * MINUTE + 1);
        assert!(matches!(f.access.session(&s.0).await.unwrap_err(), AccessError::Unauthenticated));

        // Absolute: 12 hours after sign-in, however busy.
        let (s, _) = login().await.unwrap();
        for _ in 0..(12 * 60 / 10) {
            f.access.session(&s.0).await.unwrap();
            f.advance(10 * MINUTE);
        }
        assert!(f.access.session(&s.0).await.is_err(), "{}: the session outlived 12 hours", t.name);

        // Logout, role change and disabling end sessions.
        let (s, _) = login().await.unwrap();
        f.access.logout(&s.0, audit()).await.unwrap();
        assert!(f.access.session(&s.0).await.is_err());
        let (s, _) = login().await.unwrap();
        f.access.set_role("sue", Role::Auditor, audit()).await.unwrap();
        assert!(f.access.session(&s.0).await.is_err());
        let (s, who) = login().await.unwrap();
        assert_eq!(who.role, Role::Auditor);
        f.access.disable("sue", audit()).await.unwrap();
        assert!(f.access.session(&s.0).await.is_err());
        assert!(login().await.is_err(), "{}: a disabled account signed in", t.name);
        assert!(f.access.session("not-a-session").await.is_err());
    }
}

#[tokio::test]
async fn api_tokens_are_shown_once_scoped_expiring_and_revocable() {
    for t in each_backend().await.unwrap() {
        let f = Fixture::new(&t);
        let dev = f.access.add_operator("dev", Role::Developer, false, audit()).await.unwrap();
        let uri = dev.totp_uri.unwrap().to_string();
        let (_, dana) =
            f.access.login("dev", &dev.password, Some(&f.code(&uri)), "10.0.0.5", audit()).await.unwrap();

        let (id, secret) =
            f.access.create_token(&dana, "ci", &["apps:read"], 30 * 24 * 60 * MINUTE, audit()).await.unwrap();
        assert!(secret.starts_with(TOKEN_PREFIX));
        let p = f.access.token(&secret).await.unwrap();
        assert!(p.may(Operation::AppsRead).is_allowed());
        assert!(!p.may(Operation::AppsDeploy).is_allowed(), "{}: scope exceeded", t.name);

        // A role cannot grant what it does not have, nor for too long.
        let err = f.access.create_token(&dana, "x", &["keys:write"], MINUTE, audit()).await.unwrap_err();
        assert!(matches!(err, AccessError::Forbidden(_)), "{err}");
        assert!(
            f.access.create_token(&dana, "x", &["apps:read"], 91 * 24 * 60 * MINUTE, audit()).await.is_err()
        );
        assert!(f.access.create_token(&dana, "x", &[], MINUTE, audit()).await.is_err());
        assert!(f.access.create_token(&dana, "x", &["data:read"], MINUTE, audit()).await.is_err());

        // Only a hash is stored: the secret is nowhere in the table.
        let mut tx = t.store.begin().await.unwrap();
        let rows = tx.tokens_of(dana.operator_id).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert!(!format!("{rows:?}").contains(secret.as_str()));
        drop(tx);

        // Expiry and revocation.
        let (short, short_secret) =
            f.access.create_token(&dana, "short", &["admin"], 10 * MINUTE, audit()).await.unwrap();
        assert!(f.access.token(&short_secret).await.unwrap().may(Operation::AppsDeploy).is_allowed());
        f.advance(10 * MINUTE);
        assert!(f.access.token(&short_secret).await.is_err(), "{}: expired token accepted", t.name);
        f.access.revoke_token(&dana, id, audit()).await.unwrap();
        assert!(f.access.token(&secret).await.is_err());
        assert!(f.access.revoke_token(&dana, id, audit()).await.is_err(), "revoked twice");
        assert!(f.access.token("kiln_pat_forged").await.is_err());
        assert!(f.access.token(&format!("x{}", secret.as_str())).await.is_err());

        // Someone else's token is not theirs to revoke, unless they manage operators.
        let sup = f.access.add_operator("sup", Role::Support, false, audit()).await.unwrap();
        let (_, sam) = f.access.login("sup", &sup.password, None, "10.0.0.5", audit()).await.unwrap();
        assert!(matches!(
            f.access.revoke_token(&sam, short, audit()).await.unwrap_err(),
            AccessError::Forbidden(_)
        ));
        let owner = Access::host_principal("root");
        // (already expired, but not revoked: the owner can still revoke it)
        f.access.revoke_token(&owner, short, audit()).await.unwrap();

        let actions: Vec<String> = trail(&t).await.into_iter().map(|(a, _, _)| a).collect();
        assert_eq!(actions.iter().filter(|a| *a == "token.created").count(), 2, "{}", t.name);
        assert_eq!(actions.iter().filter(|a| *a == "token.revoked").count(), 2, "{}", t.name);
        assert!(!format!("{:?}", trail(&t).await).contains(secret.as_str()));
    }
}

#[tokio::test]
async fn accounts_are_unique_named_and_mfa_can_be_reset() {
    for t in each_backend().await.unwrap() {
        let f = Fixture::new(&t);
        let own = f.access.add_operator("olive", Role::Owner, false, audit()).await.unwrap();
        assert!(matches!(
            f.access.add_operator("olive", Role::Support, false, audit()).await.unwrap_err(),
            AccessError::Conflict(_)
        ));
        assert!(matches!(
            f.access.add_operator("Olive Smith", Role::Support, false, audit()).await.unwrap_err(),
            AccessError::Invalid(_)
        ));
        let old_uri = own.totp_uri.unwrap().to_string();
        let (s, _) = f
            .access
            .login("olive", &own.password, Some(&f.code(&old_uri)), "10.0.0.6", audit())
            .await
            .unwrap();
        let new_uri = f.access.reset_mfa("olive", audit()).await.unwrap().to_string();
        assert_ne!(old_uri, new_uri);
        assert!(f.access.session(&s.0).await.is_err(), "a reset ends sessions");
        f.advance(30_000);
        assert!(
            f.access
                .login("olive", &own.password, Some(&f.code(&old_uri)), "10.0.0.6", audit())
                .await
                .is_err()
        );
        f.advance(30_000);
        f.access.login("olive", &own.password, Some(&f.code(&new_uri)), "10.0.0.6", audit()).await.unwrap();

        assert!(f.access.set_password("olive", "short", audit()).await.is_err());
        f.access.set_password("olive", "a much longer passphrase", audit()).await.unwrap();
        f.advance(30_000);
        assert!(
            f.access
                .login("olive", &own.password, Some(&f.code(&new_uri)), "10.0.0.6", audit())
                .await
                .is_err()
        );
        f.advance(30_000);
        f.access
            .login("olive", "a much longer passphrase", Some(&f.code(&new_uri)), "10.0.0.6", audit())
            .await
            .unwrap();

        let listed = f.access.operators().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].password_hash.is_empty(), "hashes are not listed");
        let report = AUDITOR.verify(&t.store, None).await.unwrap();
        assert!(report.is_intact(), "{}: {:?}", t.name, report.problems);
    }
}
