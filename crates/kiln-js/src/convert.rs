//! A handler's return value to JSON, with structured-clone rules.
//!
//! Plain data crosses (objects, arrays, strings, numbers, booleans, null,
//! Dates as ISO strings); functions, symbols, BigInts, Maps, Sets, cycles and
//! results over the size limit are refused with a message naming where the
//! problem is. `toJSON` is not called (structured clone does not), but
//! getters are, so a hostile getter runs under the same deadline and memory
//! limit as the handler. Strings, property names included, cross as
//! Unicode scalar values (see [`crate::text`]).

use rquickjs::{CatchResultExt, CaughtError, Ctx, Function, Object, Type, Value};

use crate::text;

/// Deepest nesting of a result. Bounds recursion on the host stack.
pub(crate) const MAX_RESULT_DEPTH: usize = 64;

pub(crate) enum ConvertError<'js> {
    Js(CaughtError<'js>),
    Refused(String),
}

impl<'js> From<CaughtError<'js>> for ConvertError<'js> {
    fn from(e: CaughtError<'js>) -> Self {
        ConvertError::Js(e)
    }
}

/// Serialise `value` to JSON text of at most `max_bytes`.
pub(crate) fn to_json<'js>(
    ctx: &Ctx<'js>,
    value: &Value<'js>,
    max_bytes: usize,
) -> Result<String, ConvertError<'js>> {
    if value.is_undefined() {
        return Ok("null".to_owned());
    }
    let mut w = Writer { ctx, out: String::new(), max_bytes, ancestors: Vec::new(), to_string_tag: None };
    w.value(value, &mut String::from("result"))?;
    Ok(w.out)
}

struct Writer<'a, 'js> {
    ctx: &'a Ctx<'js>,
    out: String,
    max_bytes: usize,
    ancestors: Vec<Value<'js>>,
    /// `Object.prototype.toString`, looked up at the first object.
    to_string_tag: Option<Function<'js>>,
}

impl<'js> Writer<'_, 'js> {
    fn push(&mut self, s: &str) -> Result<(), ConvertError<'js>> {
        if self.out.len() + s.len() > self.max_bytes {
            return Err(ConvertError::Refused(format!(
                "the result is larger than {} bytes; return less data (or store it and return a key)",
                self.max_bytes
            )));
        }
        self.out.push_str(s);
        Ok(())
    }

    fn value(&mut self, value: &Value<'js>, path: &mut String) -> Result<(), ConvertError<'js>> {
        match value.type_of() {
            Type::Undefined | Type::Null | Type::Uninitialized => self.push("null"),
            Type::Bool => self.push(if value.as_bool().unwrap_or(false) { "true" } else { "false" }),
            Type::Int => self.push(&value.as_int().unwrap_or(0).to_string()),
            Type::Float => {
                let f = value.as_float().unwrap_or(f64::NAN);
                self.push(&number(f))
            }
            Type::String => {
                let s = value.as_string().map(|s| text::to_rust(self.ctx, s)).transpose().catch(self.ctx)?;
                self.push(&serde_json::to_string(&s.unwrap_or_default()).unwrap_or_default())
            }
            Type::Symbol => Err(refuse(path, "a Symbol")),
            Type::BigInt => Err(refuse(path, "a BigInt (convert it to a string)")),
            Type::Function | Type::Constructor => Err(refuse(path, "a function")),
            Type::Promise => Err(refuse(path, "a Promise (await it before returning)")),
            Type::Array => self.array(value, path),
            Type::Object | Type::Exception | Type::Proxy => self.object(value, path),
            Type::Module | Type::Unknown => Err(refuse(path, "a value that cannot be cloned")),
        }
    }

    fn enter(&mut self, value: &Value<'js>, path: &str) -> Result<(), ConvertError<'js>> {
        if self.ancestors.iter().any(|a| a == value) {
            return Err(ConvertError::Refused(format!(
                "the result contains a cycle at {path}; return plain data without circular references"
            )));
        }
        if self.ancestors.len() >= MAX_RESULT_DEPTH {
            return Err(ConvertError::Refused(format!(
                "the result nests deeper than {MAX_RESULT_DEPTH} levels at {path}"
            )));
        }
        self.ancestors.push(value.clone());
        Ok(())
    }

    fn array(&mut self, value: &Value<'js>, path: &mut String) -> Result<(), ConvertError<'js>> {
        self.enter(value, path)?;
        let Some(array) = value.as_array() else { return Err(refuse(path, "an unreadable array")) };
        self.push("[")?;
        let len = array.len();
        for i in 0..len {
            if i > 0 {
                self.push(",")?;
            }
            let item: Value = array.get(i).catch(self.ctx)?;
            let keep = path.len();
            path.push_str(&format!("[{i}]"));
            if item.is_undefined() || item.is_function() || item.is_symbol() {
                if item.is_function() {
                    return Err(refuse(path, "a function"));
                }
                self.push("null")?;
            } else {
                self.value(&item, path)?;
            }
            path.truncate(keep);
        }
        self.ancestors.pop();
        self.push("]")
    }

    fn object(&mut self, value: &Value<'js>, path: &mut String) -> Result<(), ConvertError<'js>> {
        let Some(object) = value.as_object() else { return Err(refuse(path, "an unreadable object")) };
        match self.class_of(object)?.as_str() {
            "Date" => {
                let iso: Option<String> = call_method(self.ctx, object, "toISOString");
                return match iso {
                    Some(s) => self.push(&serde_json::to_string(&s).unwrap_or_default()),
                    None => self.push("null"),
                };
            }
            "Map" | "Set" | "WeakMap" | "WeakSet" => {
                return Err(refuse(path, "a Map or Set (convert it to an object or array)"));
            }
            "ArrayBuffer" | "Uint8Array" | "Int8Array" | "Uint16Array" | "Int16Array" | "Uint32Array"
            | "Int32Array" | "Float32Array" | "Float64Array" | "Uint8ClampedArray" | "BigInt64Array"
            | "BigUint64Array" | "DataView" => {
                return Err(refuse(path, "binary data (encode it, e.g. as base64 text)"));
            }
            _ => {}
        }
        self.enter(value, path)?;
        self.push("{")?;
        // Keys as JavaScript strings: rquickjs's own conversion of a
        // property name does not handle unpaired surrogates.
        let keys: Vec<Value<'js>> =
            object.keys::<Value<'js>>().collect::<rquickjs::Result<Vec<_>>>().catch(self.ctx)?;
        let mut first = true;
        for key_value in keys {
            let Some(key_string) = key_value.as_string() else { continue };
            let key = text::to_rust(self.ctx, key_string).catch(self.ctx)?;
            let item: Value = object.get(key_value.clone()).catch(self.ctx)?;
            if item.is_undefined() {
                continue;
            }
            if !first {
                self.push(",")?;
            }
            first = false;
            self.push(&serde_json::to_string(&key).unwrap_or_default())?;
            self.push(":")?;
            let keep = path.len();
            path.push('.');
            path.push_str(&key);
            self.value(&item, path)?;
            path.truncate(keep);
        }
        self.ancestors.pop();
        self.push("}")
    }

    /// `Object.prototype.toString`'s tag, e.g. `Date`, `Map`.
    fn class_of(&mut self, object: &Object<'js>) -> Result<String, ConvertError<'js>> {
        let to_string = match &self.to_string_tag {
            Some(f) => f.clone(),
            None => {
                // Looked up as `eval("Object.prototype.toString")` would (app
                // code can replace either way only for its own result), at a
                // fraction of compiling a script.
                let object: Object = self.ctx.globals().get("Object").catch(self.ctx)?;
                let prototype: Object = object.get("prototype").catch(self.ctx)?;
                let f: Function = prototype.get("toString").catch(self.ctx)?;
                self.to_string_tag.insert(f).clone()
            }
        };
        let tag: Value = to_string.call((rquickjs::function::This(object.clone()),)).catch(self.ctx)?;
        let tag = text::describe_value(self.ctx, &tag).unwrap_or_default();
        Ok(tag.trim_start_matches("[object ").trim_end_matches(']').to_owned())
    }
}

/// A number as `JSON.stringify` writes it: integral values without a
/// fraction, non-finite values as `null`.
fn number(f: f64) -> String {
    if !f.is_finite() {
        return "null".to_owned();
    }
    if f.fract() == 0.0 && f.abs() < 1e21 {
        #[expect(clippy::cast_possible_truncation, reason = "integral and below 1e21, so it fits in i128")]
        let i = f as i128;
        return i.to_string();
    }
    serde_json::Number::from_f64(f).map_or_else(|| "null".to_owned(), |n| n.to_string())
}

fn refuse<'js>(path: &str, what: &str) -> ConvertError<'js> {
    ConvertError::Refused(format!("the result contains {what} at {path}; a result must be plain data"))
}

fn call_method<'js>(ctx: &Ctx<'js>, object: &Object<'js>, name: &str) -> Option<String> {
    let f: rquickjs::Function = object.get(name).ok()?;
    let value: Value = f.call((rquickjs::function::This(object.clone()),)).ok()?;
    text::to_rust(ctx, value.as_string()?).ok()
}

/// A thrown non-Error value, in words.
pub(crate) fn describe<'js>(ctx: &Ctx<'js>, value: &Value<'js>) -> String {
    match value.type_of() {
        Type::String => format!("uncaught {:?}", text::describe_value(ctx, value).unwrap_or_default()),
        Type::Int | Type::Float | Type::Bool => {
            format!("uncaught {}", text::describe_value(ctx, value).unwrap_or_default())
        }
        Type::Undefined => "uncaught undefined".to_owned(),
        Type::Null => "uncaught null".to_owned(),
        other => format!("uncaught {other}"),
    }
}
