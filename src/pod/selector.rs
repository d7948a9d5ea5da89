//! Label selectors as `kubectl get -l` parses them (apimachinery's `labels.Parse`): requirements
//! separated by `,`, each `key`, `!key`, `key=value`, `key==value`, `key!=value`,
//! `key in (v1,v2)`, `key notin (v1,v2)`, `key>N` or `key<N`. Keys are qualified names
//! (`[prefix/]name`), values label values. Pure: parsing and matching, no I/O.

use std::collections::{BTreeMap, BTreeSet};

/// A selector that cannot be parsed: the whole selector, where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {selector:?}: {reason}")]
pub struct SelectorError {
    /// The selector as given.
    pub selector: String,
    /// What is wrong, naming the offending token.
    pub reason: String,
}

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key`: the label is present.
    Exists(String),
    /// `!key`: the label is absent.
    DoesNotExist(String),
    /// `key=v`, `key==v`, `key in (v, ...)`: present with one of the values.
    In(String, BTreeSet<String>),
    /// `key!=v`, `key notin (v, ...)`: absent, or present with none of the values.
    NotIn(String, BTreeSet<String>),
    /// `key>N`: present with an integer value greater than N.
    GreaterThan(String, i64),
    /// `key<N`: present with an integer value less than N.
    LessThan(String, i64),
}

impl Requirement {
    /// Whether `labels` satisfy this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::GreaterThan(k, n) => int_label(labels, k).is_some_and(|v| v > *n),
            Requirement::LessThan(k, n) => int_label(labels, k).is_some_and(|v| v < *n),
        }
    }
}

fn int_label(labels: &BTreeMap<String, String>, key: &str) -> Option<i64> {
    labels.get(key)?.parse().ok()
}

/// A parsed selector: every requirement must hold (the empty selector matches everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// The requirements, in the order given.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Not,
    Eq,
    DoubleEq,
    NotEq,
    In,
    NotInKw,
    Gt,
    Lt,
    Open,
    Close,
    Comma,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Ident(s) => format!("{s:?}"),
            Token::Not => "'!'".into(),
            Token::Eq => "'='".into(),
            Token::DoubleEq => "'=='".into(),
            Token::NotEq => "'!='".into(),
            Token::In => "'in'".into(),
            Token::NotInKw => "'notin'".into(),
            Token::Gt => "'>'".into(),
            Token::Lt => "'<'".into(),
            Token::Open => "'('".into(),
            Token::Close => "')'".into(),
            Token::Comma => "','".into(),
        }
    }
}

const SPECIAL: &[char] = &['!', '=', '>', '<', '(', ')', ','];

fn lex(s: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        chars.next();
        let tok = match c {
            '!' if chars.peek() == Some(&'=') => {
                chars.next();
                Token::NotEq
            }
            '!' => Token::Not,
            '=' if chars.peek() == Some(&'=') => {
                chars.next();
                Token::DoubleEq
            }
            '=' => Token::Eq,
            '>' => Token::Gt,
            '<' => Token::Lt,
            '(' => Token::Open,
            ')' => Token::Close,
            ',' => Token::Comma,
            _ => {
                let mut word = c.to_string();
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || SPECIAL.contains(&n) {
                        break;
                    }
                    word.push(n);
                    chars.next();
                }
                match word.as_str() {
                    "in" => Token::In,
                    "notin" => Token::NotInKw,
                    _ => Token::Ident(word),
                }
            }
        };
        out.push(tok);
    }
    out
}

fn is_name_part(s: &str, max: usize) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    s.len() <= max
        && s.chars().next().is_some_and(alnum)
        && s.chars().last().is_some_and(alnum)
        && s.chars()
            .all(|c| alnum(c) || c == '-' || c == '_' || c == '.')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && l.starts_with(|c: char| c.is_ascii_alphanumeric())
                && l.ends_with(|c: char| c.is_ascii_alphanumeric())
        })
}

/// Checks a label key: `[prefix/]name`, prefix a DNS subdomain, name at most 63 characters.
fn check_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if prefix.is_some_and(|p| !is_dns_subdomain(p)) || !is_name_part(name, 63) {
        return Err(format!("invalid label key {key:?}: a qualified name is at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric, with an optional DNS subdomain prefix and '/'"));
    }
    Ok(())
}

/// Checks a label value: empty, or at most 63 alphanumerics, `-`, `_`, `.`, alphanumeric at the ends.
fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_name_part(value, 63) {
        Ok(())
    } else {
        Err(format!("invalid label value {value:?}: at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric"))
    }
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn key(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Ident(k)) => {
                check_key(&k)?;
                Ok(k)
            }
            Some(t) => Err(format!("expected a label key, found {}", t.describe())),
            None => Err("expected a label key, found the end".into()),
        }
    }

    /// A value after `=`, `==` or `!=`: an identifier, or nothing (the empty value).
    fn value(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(Token::Ident(_)) => match self.next() {
                Some(Token::Ident(v)) => {
                    check_value(&v)?;
                    Ok(v)
                }
                _ => Err("expected a value".into()),
            },
            None | Some(Token::Comma) => Ok(String::new()),
            Some(t) => Err(format!("expected a value, found {}", t.describe())),
        }
    }

    fn set(&mut self, op: &str) -> Result<BTreeSet<String>, String> {
        match self.next() {
            Some(Token::Open) => {}
            Some(t) => return Err(format!("expected '(' after {op}, found {}", t.describe())),
            None => return Err(format!("expected '(' after {op}, found the end")),
        }
        let mut values = BTreeSet::new();
        if self.peek() == Some(&Token::Close) {
            return Err(format!("for '{op}', the set of values cannot be empty"));
        }
        loop {
            let v = match self.peek() {
                Some(Token::Ident(_)) => self.value()?,
                Some(Token::Comma) | Some(Token::Close) => String::new(),
                Some(t) => {
                    return Err(format!(
                        "expected a value in the set, found {}",
                        t.describe()
                    ))
                }
                None => return Err("missing ')' closing the set of values".into()),
            };
            values.insert(v);
            match self.next() {
                Some(Token::Comma) => continue,
                Some(Token::Close) => return Ok(values),
                Some(t) => {
                    return Err(format!(
                        "expected ',' or ')' in the set, found {}",
                        t.describe()
                    ))
                }
                None => return Err("missing ')' closing the set of values".into()),
            }
        }
    }

    fn integer(&mut self, op: &str) -> Result<i64, String> {
        match self.next() {
            Some(Token::Ident(v)) => v
                .parse()
                .map_err(|_| format!("for '{op}', {v:?} is not an integer")),
            Some(t) => Err(format!(
                "expected an integer after '{op}', found {}",
                t.describe()
            )),
            None => Err(format!("expected an integer after '{op}', found the end")),
        }
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        if self.peek() == Some(&Token::Not) {
            self.next();
            return Ok(Requirement::DoesNotExist(self.key()?));
        }
        let key = self.key()?;
        let one = |v: String| BTreeSet::from([v]);
        Ok(match self.peek() {
            None | Some(Token::Comma) => Requirement::Exists(key),
            Some(Token::Eq) | Some(Token::DoubleEq) => {
                self.next();
                Requirement::In(key, one(self.value()?))
            }
            Some(Token::NotEq) => {
                self.next();
                Requirement::NotIn(key, one(self.value()?))
            }
            Some(Token::In) => {
                self.next();
                Requirement::In(key, self.set("in")?)
            }
            Some(Token::NotInKw) => {
                self.next();
                Requirement::NotIn(key, self.set("notin")?)
            }
            Some(Token::Gt) => {
                self.next();
                Requirement::GreaterThan(key, self.integer(">")?)
            }
            Some(Token::Lt) => {
                self.next();
                Requirement::LessThan(key, self.integer("<")?)
            }
            Some(t) => {
                return Err(format!(
                    "after key {key:?} expected '=', '==', '!=', 'in', 'notin', '>', '<' or ',', found {}",
                    t.describe()
                ))
            }
        })
    }
}

/// Parses a selector as `kubectl -l` does; the empty (or blank) selector matches everything.
pub fn parse(selector: &str) -> Result<Selector, SelectorError> {
    let mut p = Parser {
        tokens: lex(selector),
        pos: 0,
    };
    let mut requirements = Vec::new();
    let fail = |reason: String| SelectorError {
        selector: selector.to_string(),
        reason,
    };
    if p.tokens.is_empty() {
        return Ok(Selector { requirements });
    }
    loop {
        requirements.push(p.requirement().map_err(fail)?);
        match p.next() {
            None => return Ok(Selector { requirements }),
            Some(Token::Comma) => {}
            Some(t) => {
                return Err(fail(format!(
                    "expected ',' between requirements, found {}",
                    t.describe()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(s: &str) -> Selector {
        parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn equality_and_set_based_requirements_parse_as_kubectl() {
        let set = |vs: &[&str]| vs.iter().map(|v| v.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            sel("app=myapp, tier==web,env!=prod").requirements(),
            [
                Requirement::In("app".into(), set(&["myapp"])),
                Requirement::In("tier".into(), set(&["web"])),
                Requirement::NotIn("env".into(), set(&["prod"])),
            ]
        );
        assert_eq!(
            sel("env in (prod, qa),tier notin (cache),app,!canary,example.com/rel=v1.2_b")
                .requirements(),
            [
                Requirement::In("env".into(), set(&["prod", "qa"])),
                Requirement::NotIn("tier".into(), set(&["cache"])),
                Requirement::Exists("app".into()),
                Requirement::DoesNotExist("canary".into()),
                Requirement::In("example.com/rel".into(), set(&["v1.2_b"])),
            ]
        );
        assert_eq!(
            sel("a=,b in (x,)").requirements(),
            [
                Requirement::In("a".into(), set(&[""])),
                Requirement::In("b".into(), set(&["x", ""])),
            ]
        );
        assert_eq!(
            sel("gen>2,gen<10").requirements(),
            [
                Requirement::GreaterThan("gen".into(), 2),
                Requirement::LessThan("gen".into(), 10),
            ]
        );
        assert!(sel("").requirements().is_empty());
        assert!(sel("  ").requirements().is_empty());
    }

    #[test]
    fn matching_follows_kubernetes_semantics() {
        let web = labels(&[("app", "myapp"), ("tier", "web"), ("gen", "3")]);
        let bare = labels(&[]);
        for (s, on_web, on_bare) in [
            ("", true, true),
            ("app=myapp", true, false),
            ("app==other", false, false),
            // != and notin hold when the label is absent.
            ("app!=other", true, true),
            ("tier notin (web)", false, true),
            ("tier in (web,cache)", true, false),
            ("app", true, false),
            ("!app", false, true),
            ("app=myapp,tier=cache", false, false),
            ("gen>2", true, false),
            ("gen<3", false, false),
        ] {
            let parsed = sel(s);
            assert_eq!(parsed.matches(&web), on_web, "{s:?} on web");
            assert_eq!(parsed.matches(&bare), on_bare, "{s:?} on no labels");
        }
    }

    #[test]
    fn malformed_selectors_are_refused_with_a_reason() {
        for (s, why) in [
            ("app=", ""),
            ("a b", "after key \"a\" expected"),
            ("a=b c", "expected ',' between requirements, found \"c\""),
            ("app in ()", "for 'in', the set of values cannot be empty"),
            ("app in (a", "missing ')'"),
            ("app in a", "expected '(' after in, found \"a\""),
            ("app notin", "expected '(' after notin, found the end"),
            ("=x", "expected a label key, found '='"),
            ("app,", "expected a label key, found the end"),
            (",app", "expected a label key, found ','"),
            ("!", "expected a label key, found the end"),
            ("app=a=b", "expected ',' between requirements, found '='"),
            ("-app=x", "invalid label key \"-app\""),
            ("Bad.Prefix/app=x", "invalid label key"),
            ("app=-x", "invalid label value \"-x\""),
            ("app=$(reboot)", "invalid label value"),
            ("gen>two", "\"two\" is not an integer"),
            (
                "app in (a b)",
                "expected ',' or ')' in the set, found \"b\"",
            ),
            ("app (x)", "after key \"app\" expected"),
        ] {
            match parse(s) {
                Ok(parsed) if why.is_empty() => assert_eq!(parsed.requirements().len(), 1),
                Ok(parsed) => panic!("{s:?} parsed: {parsed:?}"),
                Err(e) => {
                    assert!(!why.is_empty(), "{s:?}: {e}");
                    let text = e.to_string();
                    assert!(
                        text.starts_with(&format!("invalid label selector {s:?}: "))
                            && text.contains(why),
                        "{s:?}: {text}"
                    );
                }
            }
        }
        let long = format!("app={}", "v".repeat(64));
        assert!(parse(&long).is_err());
    }
}
