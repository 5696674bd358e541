//! The native functions the prelude is built on, installed as `__kiln` in
//! every fresh context (the prelude removes the global at once).
//!
//! Each one validates its arguments and bounds what it creates (timers, host
//! calls, log lines, random bytes), because app code can call them directly.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use kiln_ipc::LogLevel;
use rquickjs::function::{Opt, Rest, This};
use rquickjs::{ArrayBuffer, Ctx, Exception, Function, Module, Object, Persistent, Result, Value};

use crate::text::{Usv, replace_lone_surrogate_escapes};
use crate::{Loop, MAX_PENDING_HOST_CALLS, MAX_TIMERS, Program, Timer};

/// Most bytes one `crypto.getRandomValues` call may ask for (the Web limit).
const MAX_RANDOM_BYTES: usize = 65_536;

/// Longest capability name a host call may carry.
const MAX_CAPABILITY_LEN: usize = 64;

pub(crate) fn install<'js>(
    ctx: &Ctx<'js>,
    program: &'static Program,
    state: Rc<RefCell<Loop>>,
) -> Result<()> {
    let native = Object::new(ctx.clone())?;

    let s = state.clone();
    native.set(
        "log",
        Function::new(ctx.clone(), move |level: i32, Usv(text): Usv| {
            // 9: an uncaught exception (the prelude's reportUncaught); the
            // first one ends the invocation.
            if level == 9 {
                s.borrow_mut().uncaught.get_or_insert(text);
                return;
            }
            let level = match level {
                0 => LogLevel::Debug,
                2 => LogLevel::Warn,
                3 => LogLevel::Error,
                _ => LogLevel::Info,
            };
            s.borrow_mut().push_log(level, text);
        })?,
    )?;

    let s = state.clone();
    native.set(
        "setTimer",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, ms: f64, repeat: bool| -> Result<f64> {
            let mut st = s.borrow_mut();
            if st.live_timers.len() >= MAX_TIMERS {
                return Err(Exception::throw_range(
                    &ctx,
                    &format!("too many timers (at most {MAX_TIMERS} at once)"),
                ));
            }
            // Anything past a year is as good as never within any deadline.
            let ms = if ms.is_finite() { ms.clamp(0.0, 365.0 * 86_400_000.0) } else { 0.0 };
            let delay = Duration::from_micros((ms * 1000.0) as u64);
            st.next_timer += 1;
            let id = st.next_timer;
            let due = Instant::now() + delay;
            let timer = Timer { id, interval: repeat.then_some(delay) };
            st.timers.insert((due, id), timer);
            st.live_timers.insert(id, (due, id));
            Ok(id as f64)
        })?,
    )?;

    let s = state.clone();
    native.set(
        "clearTimer",
        Function::new(ctx.clone(), move |id: f64| {
            let mut st = s.borrow_mut();
            if let Some(key) = st.live_timers.remove(&(id as u64)) {
                st.timers.remove(&key);
            }
        })?,
    )?;

    native.set(
        "resolve",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, Usv(from): Usv, Usv(specifier): Usv| match program
            .links
            .resolve(&from, &specifier)
        {
            Ok(target) => target_object(&ctx, &target),
            Err(message) => {
                Err(Exception::throw_message(&ctx, &format!("Cannot find module '{specifier}': {message}")))
            }
        })?,
    )?;

    native.set(
        "target",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, Usv(id): Usv| match program.links.target(&id) {
            Ok(target) => target_object(&ctx, &target),
            Err(message) => Err(Exception::throw_message(&ctx, &message)),
        })?,
    )?;

    native.set(
        "importSync",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, Usv(name): Usv| import_sync(&ctx, &name))?,
    )?;

    // Math.random from a generator seeded afresh for every invocation (see
    // `Prepared::run`). QuickJS seeds its own from the clock when a context
    // is made, so invocations forked from one prepared context would all
    // draw the same sequence.
    let s = state.clone();
    let math: Object = ctx.globals().get("Math")?;
    math.set(
        "random",
        Function::new(ctx.clone(), move || -> f64 { s.borrow_mut().next_random() })?.with_name("random")?,
    )?;

    // Globals the prelude defines, as Node has them: writable, configurable,
    // not enumerable. Defined here rather than with `Object.defineProperty`
    // because building a descriptor object per global costs more than the
    // rest of the definition, and every fresh runtime pays it.
    native.set(
        "defineGlobals",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, values: Object<'js>| -> Result<()> {
            let globals = ctx.globals();
            for entry in values.props::<rquickjs::Atom<'js>, Value<'js>>() {
                let (name, value) = entry?;
                globals.prop(name, rquickjs::object::Property::from(value).writable().configurable())?;
            }
            Ok(())
        })?,
    )?;

    // The engine's queueMicrotask, which `kiln:uncaught` wraps, before the
    // global becomes a lazy one.
    let engine_queue: Value = ctx.globals().get("queueMicrotask")?;
    native.set("queueMicrotask", engine_queue)?;
    define_lazy_globals(ctx)?;
    define_lazy_methods(ctx)?;

    // The rest, used only by modules loaded on demand (`kiln:natives`),
    // is added when the first of them loads: a fresh runtime that never
    // needs them does not make them.
    let s = state.clone();
    native.set(
        "extras",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, native: This<Object<'js>>| {
            install_extras(&ctx, &native.0, program, s.clone())
        })?,
    )?;

    let s = state;
    native.set(
        "install",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, functions: Object<'js>| {
            s.borrow_mut().installed = Some(Persistent::save(&ctx, functions));
        })?,
    )?;

    ctx.globals().set("__kiln", native)?;
    Ok(())
}

/// The natives only modules loaded on demand use (crypto, URL, host calls,
/// Buffer, process, Forge's API), added to `native` by `native.extras()`.
fn install_extras<'js>(
    ctx: &Ctx<'js>,
    native: &Object<'js>,
    program: &'static Program,
    state: Rc<RefCell<Loop>>,
) -> Result<()> {
    // Time zones for Intl (`kiln:intl-date`), from the IANA database
    // compiled into the binary: a zone's canonical name, and its offset
    // from UTC (seconds) and abbreviation at an instant.
    native.set(
        "timeZoneName",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, Usv(name): Usv| -> Result<String> {
            match jiff::tz::db().get(&name) {
                Ok(zone) => Ok(zone.iana_name().unwrap_or(&name).to_owned()),
                Err(_) => Err(Exception::throw_range(&ctx, &format!("Invalid time zone specified: {name}"))),
            }
        })?,
    )?;
    native.set(
        "timeZoneOffset",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>, Usv(name): Usv, millis: f64| -> Result<Object<'js>> {
                let zone = jiff::tz::db().get(&name).map_err(|_| {
                    Exception::throw_range(&ctx, &format!("Invalid time zone specified: {name}"))
                })?;
                // Date's range (±8.64e15 ms) is within jiff's.
                #[expect(
                    clippy::cast_possible_truncation,
                    reason = "a finite time value, checked by the caller"
                )]
                let instant = jiff::Timestamp::from_millisecond(millis as i64)
                    .map_err(|_| Exception::throw_range(&ctx, "Invalid time value"))?;
                let info = zone.to_offset_info(instant);
                let out = Object::new(ctx.clone())?;
                out.set("seconds", info.offset().seconds())?;
                out.set("abbreviation", info.abbreviation())?;
                Ok(out)
            },
        )?,
    )?;

    // atob and btoa (the globals, from `kiln:base64`), Buffer and fetch.
    native.set(
        "btoa",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, Usv(input): Usv| -> Result<String> {
            use base64::Engine;
            // btoa takes a "binary string": every code unit must fit a byte.
            let bytes: Option<Vec<u8>> = input.encode_utf16().map(|u| u8::try_from(u).ok()).collect();
            match bytes {
                Some(b) => Ok(base64::engine::general_purpose::STANDARD.encode(b)),
                None => Err(dom_exception(
                    &ctx,
                    "btoa takes only characters up to U+00FF",
                    "InvalidCharacterError",
                )),
            }
        })?,
    )?;

    native.set(
        "atob",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, Usv(input): Usv| -> Result<String> {
            use base64::Engine;
            // Forgiving base64: ASCII whitespace ignored, padding optional.
            let cleaned: String = input.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            let trimmed = cleaned.trim_end_matches('=');
            match base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed) {
                Ok(bytes) => Ok(bytes.into_iter().map(char::from).collect()),
                Err(_) => Err(dom_exception(
                    &ctx,
                    "atob was given text that is not base64",
                    "InvalidCharacterError",
                )),
            }
        })?,
    )?;

    // The invocation's runtime description as JSON ("" when it has none).
    let s = state.clone();
    native.set("runtime", Function::new(ctx.clone(), move || s.borrow().runtime.clone())?)?;

    // Milliseconds left before the invocation's deadline.
    let s = state.clone();
    native.set(
        "remainingMillis",
        Function::new(ctx.clone(), move || -> f64 {
            let st = s.borrow();
            match (st.started, st.limits) {
                (Some(started), Some(limits)) => {
                    let left = Duration::from_millis(limits.deadline_ms).saturating_sub(started.elapsed());
                    left.as_millis() as f64
                }
                _ => 0.0,
            }
        })?,
    )?;

    // The app's variables as JSON, for `process.env`.
    native.set("env", Function::new(ctx.clone(), move || program.env.clone())?)?;

    let s = state.clone();
    native.set(
        "hostCall",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>, Usv(capability): Usv, Usv(args): Usv| -> Result<f64> {
                let mut st = s.borrow_mut();
                if st.pending_calls >= MAX_PENDING_HOST_CALLS {
                    return Err(Exception::throw_range(
                        &ctx,
                        &format!("too many host calls in flight (at most {MAX_PENDING_HOST_CALLS})"),
                    ));
                }
                if capability.is_empty() || capability.len() > MAX_CAPABILITY_LEN {
                    return Err(Exception::throw_type(&ctx, "invalid capability name"));
                }
                // The arguments come from the engine's JSON.stringify, which
                // escapes an unpaired surrogate; it crosses as U+FFFD.
                let args: serde_json::Value = serde_json::from_str(&args)
                    .or_else(|_| serde_json::from_str(&replace_lone_surrogate_escapes(&args)))
                    .map_err(|e| {
                        Exception::throw_type(&ctx, &format!("host call arguments are not JSON: {e}"))
                    })?;
                st.next_call += 1;
                let id = st.next_call;
                st.pending_calls += 1;
                st.calls.push((id, capability, args));
                Ok(id as f64)
            },
        )?,
    )?;

    native.set(
        "random",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, n: usize| -> Result<Vec<u8>> {
            if n > MAX_RANDOM_BYTES {
                return Err(Exception::throw_range(&ctx, "too many random bytes requested"));
            }
            let mut bytes = vec![0u8; n];
            kiln_crypto::fill_random(&mut bytes)
                .map_err(|e| Exception::throw_internal(&ctx, &e.to_string()))?;
            Ok(bytes)
        })?,
    )?;

    native.set(
        "base64ToBytes",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, Usv(input): Usv| -> Result<ArrayBuffer<'js>> {
            use base64::Engine;
            // Bodies of host replies (fetch, product requests) arrive as base64;
            // decoding here spares a byte-at-a-time loop in JavaScript.
            match base64::engine::general_purpose::STANDARD_NO_PAD.decode(input.trim_end_matches('=')) {
                Ok(bytes) => ArrayBuffer::new(ctx, bytes),
                Err(_) => Err(Exception::throw_type(&ctx, "the text is not base64")),
            }
        })?,
    )?;

    native.set(
        "base64Decode",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, Usv(input): Usv| -> Result<ArrayBuffer<'js>> {
            use base64::Engine;
            // Node's forgiving decoder: both alphabets, anything else
            // skipped, stop at the first '=', trailing bits ignored.
            let symbols: String = input
                .chars()
                .take_while(|c| *c != '=')
                .filter_map(|c| match c {
                    '-' => Some('+'),
                    '_' => Some('/'),
                    c if c.is_ascii_alphanumeric() || c == '+' || c == '/' => Some(c),
                    _ => None,
                })
                .collect();
            let usable = symbols.len() - usize::from(symbols.len() % 4 == 1);
            let bytes = LENIENT_BASE64
                .decode(symbols.get(..usable).unwrap_or_default())
                .map_err(|e| Exception::throw_type(&ctx, &format!("the text is not base64: {e}")))?;
            ArrayBuffer::new(ctx, bytes)
        })?,
    )?;

    native.set(
        "digest",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, Usv(algorithm): Usv, Usv(data): Usv| {
            let algorithm = digest_algorithm(&ctx, &algorithm)?;
            let data = binary_bytes(&ctx, &data)?;
            ArrayBuffer::new(ctx, kiln_crypto::digest::digest(algorithm, &data))
        })?,
    )?;

    native.set(
        "hmac",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>, Usv(algorithm): Usv, Usv(key): Usv, Usv(data): Usv| {
                let algorithm = digest_algorithm(&ctx, &algorithm)?;
                let key = binary_bytes(&ctx, &key)?;
                let data = binary_bytes(&ctx, &data)?;
                ArrayBuffer::new(ctx, kiln_crypto::digest::hmac(algorithm, &key, &data))
            },
        )?,
    )?;

    // A public key from PEM text, DER (`spki`, `pkcs1`; a binary string)
    // or a JWK (JSON text), described for `KeyObject`.
    native.set(
        "publicKey",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, Usv(format): Usv, Usv(data): Usv| {
            let key = public_key(&ctx, &format, &data)?;
            public_key_object(&ctx, &key)
        })?,
    )?;

    // Whether `signature` signs `message` under the DER SubjectPublicKeyInfo
    // `spki`; padding applies to RSA keys, encoding to EC keys.
    native.set(
        "verifySignature",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>,
                  Usv(spki): Usv,
                  Usv(digest): Usv,
                  Usv(padding): Usv,
                  Usv(encoding): Usv,
                  Usv(message): Usv,
                  Usv(signature): Usv|
                  -> Result<bool> {
                use kiln_crypto::signature::{EcdsaEncoding, PublicKey, RsaPadding, SignatureScheme};
                let key = PublicKey::from_spki_der(&binary_bytes(&ctx, &spki)?)
                    .map_err(|e| signature_error(&ctx, &e))?;
                let digest = digest_algorithm(&ctx, &digest)?;
                let padding = match padding.as_str() {
                    "pkcs1" => RsaPadding::Pkcs1v15,
                    "pss" => RsaPadding::Pss,
                    _ => return Err(Exception::throw_type(&ctx, "unknown RSA padding")),
                };
                let encoding = match encoding.as_str() {
                    "der" => EcdsaEncoding::Der,
                    "ieee-p1363" => EcdsaEncoding::P1363,
                    _ => return Err(Exception::throw_type(&ctx, "unknown ECDSA signature encoding")),
                };
                let scheme = SignatureScheme::for_key(&key, digest, padding, encoding);
                key.verify(scheme, &binary_bytes(&ctx, &message)?, &binary_bytes(&ctx, &signature)?)
                    .map_err(|e| signature_error(&ctx, &e))
            },
        )?,
    )?;

    let s = state.clone();
    native.set(
        "monotonicMs",
        Function::new(ctx.clone(), move || {
            let started = s.borrow().started;
            started.map_or(0.0, |t| t.elapsed().as_secs_f64() * 1000.0)
        })?,
    )?;

    native.set(
        "urlParse",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, Usv(input): Usv, base: Opt<Option<Usv>>| {
            let parsed = match base.0.flatten() {
                Some(Usv(base)) => url::Url::parse(&base).and_then(|b| b.join(&input)),
                None => url::Url::parse(&input),
            };
            match parsed {
                Ok(url) => url_parts(&ctx, &url),
                Err(e) => {
                    Err(Exception::throw_type(&ctx, &format!("Invalid URL '{}': {e}", shorten(&input))))
                }
            }
        })?,
    )?;

    native.set(
        "urlSet",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>, Usv(href): Usv, Usv(component): Usv, Usv(value): Usv| {
                let Ok(mut url) = url::Url::parse(&href) else {
                    return Err(Exception::throw_type(&ctx, "Invalid URL"));
                };
                // Setters that fail leave the URL unchanged, as in browsers.
                let _ = match component.as_str() {
                    "protocol" => url.set_scheme(value.trim_end_matches(':')).map_err(|_| ()),
                    "username" => url.set_username(&value),
                    "password" => url.set_password(Some(&value)),
                    "host" => url::quirks::set_host(&mut url, &value),
                    "hostname" => url::quirks::set_hostname(&mut url, &value),
                    "port" => url::quirks::set_port(&mut url, &value),
                    "pathname" => {
                        url::quirks::set_pathname(&mut url, &value);
                        Ok(())
                    }
                    "search" => {
                        url::quirks::set_search(&mut url, &value);
                        Ok(())
                    }
                    "hash" => {
                        url::quirks::set_hash(&mut url, &value);
                        Ok(())
                    }
                    _ => Err(()),
                };
                url_parts(&ctx, &url)
            },
        )?,
    )?;

    Ok(())
}

/// Import an engine module and run the job queue until it has evaluated, so
/// `require()` can return it synchronously.
pub(crate) fn import_sync<'js>(ctx: &Ctx<'js>, name: &str) -> Result<Object<'js>> {
    let promise = Module::import(ctx, name)?;
    loop {
        match promise.state() {
            rquickjs::promise::PromiseState::Pending => {
                if !ctx.execute_pending_job() {
                    return Err(Exception::throw_message(
                        ctx,
                        &format!(
                            "module '{name}' did not finish loading: it awaits something that never settles"
                        ),
                    ));
                }
            }
            _ => return promise.finish::<Object>(),
        }
    }
}

fn target_object<'js>(ctx: &Ctx<'js>, target: &crate::Target) -> Result<Object<'js>> {
    let o = Object::new(ctx.clone())?;
    o.set("kind", target.kind_name())?;
    o.set("id", target.id.as_str())?;
    o.set("name", target.name.as_str())?;
    Ok(o)
}

fn url_parts<'js>(ctx: &Ctx<'js>, url: &url::Url) -> Result<Value<'js>> {
    let o = Object::new(ctx.clone())?;
    o.set("href", url::quirks::href(url))?;
    o.set("origin", url::quirks::origin(url))?;
    o.set("protocol", url::quirks::protocol(url))?;
    o.set("username", url::quirks::username(url))?;
    o.set("password", url::quirks::password(url))?;
    o.set("host", url::quirks::host(url))?;
    o.set("hostname", url::quirks::hostname(url))?;
    o.set("port", url::quirks::port(url))?;
    o.set("pathname", url::quirks::pathname(url))?;
    o.set("search", url::quirks::search(url))?;
    o.set("hash", url::quirks::hash(url))?;
    Ok(o.into_value())
}

/// Node's base64 decoding accepts what a strict decoder refuses: missing
/// padding and non-zero bits after the last byte.
const LENIENT_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone),
);

/// Bytes handed over from JavaScript as a "binary string" (one character,
/// U+0000 to U+00FF, per byte): the engine gives safe code no view of a
/// typed array's memory.
fn binary_bytes(ctx: &Ctx<'_>, s: &str) -> Result<Vec<u8>> {
    s.chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| Exception::throw_type(ctx, "bytes must be passed as a binary string"))
}

fn digest_algorithm(ctx: &Ctx<'_>, name: &str) -> Result<kiln_crypto::digest::DigestAlgorithm> {
    kiln_crypto::digest::DigestAlgorithm::from_name(name).ok_or_else(|| {
        Exception::throw_type(
            ctx,
            &format!(
                "Digest method not supported: '{}' (Kiln offers md5, sha1, sha256, sha384 and sha512)",
                shorten(name)
            ),
        )
    })
}

/// The one place key input from app code becomes a [`PublicKey`].
///
/// [`PublicKey`]: kiln_crypto::signature::PublicKey
fn public_key(ctx: &Ctx<'_>, format: &str, data: &str) -> Result<kiln_crypto::signature::PublicKey> {
    use kiln_crypto::signature::{Jwk, MAX_KEY_INPUT_BYTES, PublicKey, SignatureError};
    if data.len() > MAX_KEY_INPUT_BYTES {
        return Err(signature_error(ctx, &SignatureError::TooLarge(data.len())));
    }
    let key = match format {
        "pem" => PublicKey::from_pem(data),
        "spki" => PublicKey::from_spki_der(&binary_bytes(ctx, data)?),
        "pkcs1" => PublicKey::from_pkcs1_der(&binary_bytes(ctx, data)?),
        "jwk" => match serde_json::from_str::<Jwk>(data) {
            Ok(jwk) => PublicKey::from_jwk(&jwk),
            Err(_) => {
                Err(SignatureError::Malformed("the JWK's kty, n, e, crv, x and y must be strings".into()))
            }
        },
        _ => return Err(Exception::throw_type(ctx, "unknown public key format")),
    };
    key.map_err(|e| signature_error(ctx, &e))
}

/// What `KeyObject` needs of a public key: its type, encodings and details.
fn public_key_object<'js>(ctx: &Ctx<'js>, key: &kiln_crypto::signature::PublicKey) -> Result<Object<'js>> {
    use base64::Engine;
    let url = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let o = Object::new(ctx.clone())?;
    let jwk = Object::new(ctx.clone())?;
    o.set("type", key.key_type().node_name())?;
    o.set("spki", ArrayBuffer::new(ctx.clone(), key.to_spki_der())?)?;
    if let (Some((n, e)), Some(pkcs1), Some(bits)) =
        (key.rsa_components(), key.to_pkcs1_der(), key.rsa_modulus_bits())
    {
        o.set("pkcs1", ArrayBuffer::new(ctx.clone(), pkcs1)?)?;
        o.set("modulusLength", bits)?;
        o.set("publicExponent", e.iter().map(|b| format!("{b:02x}")).collect::<String>())?;
        jwk.set("kty", "RSA")?;
        jwk.set("n", url(n))?;
        jwk.set("e", url(e))?;
    }
    if let Some((curve, x, y)) = key.ec_coordinates() {
        o.set("namedCurve", curve.openssl_name())?;
        o.set("curve", curve.jwk_name())?;
        jwk.set("kty", "EC")?;
        jwk.set("x", url(x))?;
        jwk.set("y", url(y))?;
        jwk.set("crv", curve.jwk_name())?;
    }
    o.set("jwk", jwk)?;
    Ok(o)
}

/// A key or signature refusal as the app sees it: a `NotSupportedError`
/// for what Kiln will not do, an `Error` for malformed input, each with a
/// `code` to test for.
fn signature_error(ctx: &Ctx<'_>, error: &kiln_crypto::signature::SignatureError) -> rquickjs::Error {
    let (name, code) = if error.is_unsupported() {
        ("NotSupportedError", "NOT_SUPPORTED")
    } else {
        ("Error", "ERR_KILN_INVALID_KEY")
    };
    let thrown = Exception::from_message(ctx.clone(), &error.to_string()).and_then(|exception| {
        exception.as_object().set("name", name)?;
        exception.as_object().set("code", code)?;
        Ok(exception.throw())
    });
    match thrown {
        Ok(e) | Err(e) => e,
    }
}

fn shorten(s: &str) -> String {
    s.chars().take(200).collect()
}

/// Globals defined on first use from Kiln's modules, so that a fresh runtime
/// pays only for an accessor each: (global, module, export).
const LAZY_GLOBALS: [(&str, &str, &str); 23] = [
    ("atob", "kiln:base64", "atob"),
    ("btoa", "kiln:base64", "btoa"),
    ("TextEncoder", "kiln:text", "TextEncoder"),
    ("TextDecoder", "kiln:text", "TextDecoder"),
    ("URL", "kiln:url", "URL"),
    ("URLSearchParams", "kiln:url", "URLSearchParams"),
    ("structuredClone", "kiln:clone", "structuredClone"),
    ("crypto", "kiln:crypto", "crypto"),
    ("performance", "kiln:crypto", "performance"),
    ("DOMException", "kiln:crypto", "DOMException"),
    ("fetch", "kiln:fetch", "fetch"),
    ("Headers", "kiln:fetch", "Headers"),
    ("Response", "kiln:fetch", "Response"),
    ("AbortController", "kiln:abort", "AbortController"),
    ("AbortSignal", "kiln:abort", "AbortSignal"),
    ("EventTarget", "kiln:abort", "EventTarget"),
    ("Event", "kiln:abort", "Event"),
    ("queueMicrotask", "kiln:uncaught", "queueMicrotask"),
    ("Intl", "kiln:intl", "Intl"),
    // Node's globals, which apps and their dependencies use without importing.
    ("Buffer", "builtin:node:buffer", "Buffer"),
    ("process", "builtin:node:process", "default"),
    ("setImmediate", "builtin:node:timers", "setImmediate"),
    ("clearImmediate", "builtin:node:timers", "clearImmediate"),
];

/// Define [`LAZY_GLOBALS`]. Each one's accessor is a native function that
/// serves as both getter (called with no argument, it loads the value from
/// its module) and setter (called with the value app code assigns first);
/// either way the global then becomes a plain data property, writable,
/// configurable and not enumerable, as Node defines it. Made here from a
/// static table rather than in the prelude, where each one cost a closure,
/// its strings read from bytecode and a property of a table object.
fn define_lazy_globals<'js>(ctx: &Ctx<'js>) -> Result<()> {
    let globals = ctx.globals();
    for (name, module, export) in LAZY_GLOBALS {
        let load = move |ctx: Ctx<'js>, assigned: Opt<Value<'js>>| -> Result<Value<'js>> {
            let value = match assigned.0 {
                Some(value) => value,
                None => import_sync(&ctx, module)?.get(export)?,
            };
            ctx.globals()
                .prop(name, rquickjs::object::Property::from(value.clone()).writable().configurable())?;
            Ok(value)
        };
        globals.prop(name, LazyGlobal(Function::new(ctx.clone(), load)?))?;
    }
    Ok(())
}

/// Methods of the built-ins that Node.js bases on `Intl`, served by Kiln's
/// Intl modules (constructor, method, module, export): the engine's own
/// compare code units and print numbers without grouping. Each costs a
/// fresh runtime a native function, so `BigInt.prototype.toLocaleString`,
/// rarely used, keeps the engine's (no grouping).
const LAZY_METHODS: [(&str, &str, &str, &str); 5] = [
    ("Number", "toLocaleString", "kiln:intl-number", "toLocaleString"),
    ("Date", "toLocaleString", "kiln:intl-date", "toLocaleString"),
    ("Date", "toLocaleDateString", "kiln:intl-date", "toLocaleDateString"),
    ("Date", "toLocaleTimeString", "kiln:intl-date", "toLocaleTimeString"),
    ("String", "localeCompare", "kiln:intl-collator", "localeCompare"),
];

/// Put [`LAZY_METHODS`] on their prototypes: each is a native function that
/// loads its module when first called and hands every call to Kiln's
/// method. Replacing an existing method's value is far cheaper than
/// redefining the property as an accessor (as [`define_lazy_globals`] does),
/// and a trampoline stays right when app code wraps the method (keeps a
/// reference to it and assigns its own). What is visible: the method has no
/// `name`.
fn define_lazy_methods<'js>(ctx: &Ctx<'js>) -> Result<()> {
    let globals = ctx.globals();
    let mut prototype: Option<(&str, Object<'js>)> = None;
    for (constructor, method, module, export) in LAZY_METHODS {
        let target = match prototype.take() {
            Some((name, object)) if name == constructor => object,
            _ => globals.get::<_, Object>(constructor)?.get("prototype")?,
        };
        let call =
            move |ctx: Ctx<'js>, this: This<Value<'js>>, args: Rest<Value<'js>>| -> Result<Value<'js>> {
                let ours: Function = import_sync(&ctx, module)?.get(export)?;
                ours.call((This(this.0), Rest(args.0)))
            };
        target.set(method, Function::new(ctx.clone(), call)?)?;
        prototype = Some((constructor, target));
    }
    Ok(())
}

/// A DOMException (Kiln's, from `kiln:crypto`) to throw, as Web APIs throw.
fn dom_exception(ctx: &Ctx<'_>, message: &str, name: &str) -> rquickjs::Error {
    let made = import_sync(ctx, "kiln:crypto")
        .and_then(|m| m.get::<_, rquickjs::function::Constructor>("DOMException"))
        .and_then(|c| c.construct::<_, Value>((message, name)));
    match made {
        Ok(error) => ctx.throw(error),
        Err(e) => e,
    }
}

/// A global's accessor: one function serves as both getter and setter (see
/// [`define_lazy_globals`]).
struct LazyGlobal<'js>(Function<'js>);

impl<'js> rquickjs::object::AsProperty<'js, ()> for LazyGlobal<'js> {
    fn config(
        self,
        ctx: &Ctx<'js>,
    ) -> Result<(rquickjs::object::PropertyFlags, Value<'js>, Value<'js>, Value<'js>)> {
        use rquickjs::qjs;
        let flags = qjs::JS_PROP_HAS_GET
            | qjs::JS_PROP_HAS_SET
            | qjs::JS_PROP_CONFIGURABLE
            | qjs::JS_PROP_HAS_CONFIGURABLE
            | qjs::JS_PROP_HAS_ENUMERABLE;
        let function = self.0.into_value();
        Ok((
            flags as rquickjs::object::PropertyFlags,
            Value::new_undefined(ctx.clone()),
            function.clone(),
            function,
        ))
    }
}
