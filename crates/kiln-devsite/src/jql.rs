//! The JQL the dev site understands: `project = X`, `status = "Y"` (quoted
//! or bare) and `key = K` (or `issuekey`), joined by `AND`, then optionally
//! `ORDER BY created ASC|DESC`. Anything else is refused with a message
//! naming the part it does not support, rather than being half-understood.

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Query {
    pub(crate) clauses: Vec<Clause>,
    pub(crate) order: Option<Order>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Clause {
    Project(String),
    Status(String),
    Key(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    CreatedAsc,
    CreatedDesc,
}

/// JQL longer than this is refused: the subset never needs it.
const MAX_JQL_LEN: usize = 4096;

/// A query outside the subset; the message names the unsupported part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "The dev site does not support {0} in JQL. It understands project = X, status = \"Y\" and key = K \
     joined by AND, optionally followed by ORDER BY created ASC|DESC."
)]
pub(crate) struct Unsupported(String);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
    Symbol(String),
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Word(w) | Token::Symbol(w) => format!("'{w}'"),
            Token::Quoted(q) => format!("\"{q}\" here"),
        }
    }

    fn is_keyword(&self, keyword: &str) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(keyword))
    }
}

pub(crate) fn parse(jql: &str) -> Result<Query, Unsupported> {
    if jql.len() > MAX_JQL_LEN {
        return Err(Unsupported(format!("queries longer than {MAX_JQL_LEN} characters")));
    }
    let tokens = tokenize(jql)?;
    let mut it = tokens.into_iter().peekable();
    let mut query = Query::default();
    let unsupported = |t: Option<&Token>| {
        Unsupported(t.map_or_else(|| "a query that ends here".to_owned(), Token::describe))
    };
    if it.peek().is_none() {
        return Ok(query);
    }
    if !it.peek().is_some_and(|t| t.is_keyword("order")) {
        loop {
            let field = match it.next() {
                Some(Token::Word(w)) => w,
                other => return Err(unsupported(other.as_ref())),
            };
            let make: fn(String) -> Clause = match field.to_ascii_lowercase().as_str() {
                "project" => Clause::Project,
                "status" => Clause::Status,
                "key" | "issuekey" => Clause::Key,
                _ => return Err(Unsupported(format!("the field '{field}'"))),
            };
            match it.next() {
                Some(Token::Symbol(s)) if s == "=" => {}
                Some(Token::Word(w)) => return Err(Unsupported(format!("the operator '{w}'"))),
                Some(Token::Symbol(s)) => return Err(Unsupported(format!("the operator '{s}'"))),
                other => return Err(unsupported(other.as_ref())),
            }
            let value = match it.next() {
                Some(Token::Quoted(q)) => q,
                Some(Token::Word(w))
                    if !["and", "or", "not", "order"].contains(&w.to_ascii_lowercase().as_str()) =>
                {
                    if w.ends_with("()")
                        || it.peek().is_some_and(|t| matches!(t, Token::Symbol(s) if s == "("))
                    {
                        return Err(Unsupported(format!("the function '{w}'")));
                    }
                    w
                }
                other => return Err(unsupported(other.as_ref())),
            };
            query.clauses.push(make(value));
            match it.peek() {
                None => return Ok(query),
                Some(t) if t.is_keyword("and") => {
                    it.next();
                }
                Some(t) if t.is_keyword("order") => break,
                Some(t) => return Err(unsupported(Some(t))),
            }
        }
    }
    // ORDER BY created [ASC|DESC]
    it.next();
    match it.next() {
        Some(t) if t.is_keyword("by") => {}
        other => return Err(unsupported(other.as_ref())),
    }
    match it.next() {
        Some(t) if t.is_keyword("created") => {}
        Some(Token::Word(w)) => return Err(Unsupported(format!("ORDER BY {w}"))),
        other => return Err(unsupported(other.as_ref())),
    }
    query.order = Some(match it.next() {
        None => Order::CreatedAsc,
        Some(t) if t.is_keyword("asc") => Order::CreatedAsc,
        Some(t) if t.is_keyword("desc") => Order::CreatedDesc,
        Some(t) => return Err(unsupported(Some(&t))),
    });
    match it.next() {
        None => Ok(query),
        Some(t) => Err(unsupported(Some(&t))),
    }
}

fn tokenize(jql: &str) -> Result<Vec<Token>, Unsupported> {
    let mut tokens = Vec::new();
    let mut chars = jql.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' || c == '\'' {
            chars.next();
            let mut text = String::new();
            loop {
                match chars.next() {
                    None => return Err(Unsupported("an unterminated quoted string".to_owned())),
                    Some('\\') => match chars.next() {
                        Some(escaped) => text.push(escaped),
                        None => return Err(Unsupported("an unterminated quoted string".to_owned())),
                    },
                    Some(q) if q == c => break,
                    Some(other) => text.push(other),
                }
            }
            tokens.push(Token::Quoted(text));
        } else if "=!<>~(),".contains(c) {
            chars.next();
            let mut symbol = c.to_string();
            if matches!(c, '!' | '<' | '>') && chars.peek().is_some_and(|n| *n == '=' || *n == '~') {
                symbol.extend(chars.next());
            }
            tokens.push(Token::Symbol(symbol));
        } else {
            let mut word = String::new();
            while let Some(&w) = chars.peek() {
                if w.is_whitespace() || "=!<>~(),\"'".contains(w) {
                    break;
                }
                word.push(w);
                chars.next();
            }
            // `currentUser()` reads as one function word.
            if chars.peek() == Some(&'(') {
                let mut look = chars.clone();
                look.next();
                if look.peek() == Some(&')') {
                    chars.next();
                    chars.next();
                    word.push_str("()");
                }
            }
            tokens.push(Token::Word(word));
        }
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subset_parses() {
        assert_eq!(parse("").unwrap(), Query::default());
        assert_eq!(
            parse(r#"project = KILN AND status = "In Progress" ORDER BY created DESC"#).unwrap(),
            Query {
                clauses: vec![Clause::Project("KILN".into()), Clause::Status("In Progress".into())],
                order: Some(Order::CreatedDesc),
            }
        );
        assert_eq!(
            parse("key=KILN-1 and status = Done").unwrap().clauses,
            vec![Clause::Key("KILN-1".into()), Clause::Status("Done".into())]
        );
        assert_eq!(parse("order by created").unwrap().order, Some(Order::CreatedAsc));
        assert_eq!(parse("status = 'To Do'").unwrap().clauses, vec![Clause::Status("To Do".into())]);
    }

    #[test]
    fn anything_else_is_refused_naming_the_part() {
        for (jql, part) in [
            ("project = KILN OR project = SEC", "'OR'"),
            ("assignee = currentUser()", "the field 'assignee'"),
            ("project != KILN", "the operator '!='"),
            ("project in (KILN, SEC)", "the operator 'in'"),
            ("project = KILN ORDER BY updated", "ORDER BY updated"),
            ("project = KILN AND", "a query that ends here"),
            ("status = \"Done", "an unterminated quoted string"),
            ("project = KILN ORDER BY created DESC, key", "','"),
            ("status = currentStatus()", "the function 'currentStatus()'"),
        ] {
            let err = parse(jql).unwrap_err().to_string();
            assert!(err.contains(part), "{jql}: {err}");
        }
    }
}
