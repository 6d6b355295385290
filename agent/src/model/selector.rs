//! Calico's label selector language: a parser that accepts the subset networking-calico and
//! operators use, rejects everything else with the position and reason, and an evaluator over a
//! label map.
//!
//! Grammar (lowest precedence first):
//! ```text
//! or   := and ( "||" and )*
//! and  := unary ( "&&" unary )*
//! unary:= "!" unary | "(" or ")" | "all()" | "has(" key ")"
//!       | key ("==" | "!=") string | key ["not"] "in" "{" [string ("," string)*] "}"
//! ```
//! Strings are single- or double-quoted. As in Calico, `k != 'v'` and `k not in {..}` are true
//! for an endpoint without the label `k`.
//!
//! The [`Display`](std::fmt::Display) form is canonical (normalised spacing, sorted sets), so
//! two spellings of one selector compare equal and share one membership set.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A selector that failed to parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {text:?} at byte {position}: {reason}")]
pub struct SelectorError {
    /// The selector as written.
    pub text: String,
    /// Byte offset of the problem.
    pub position: usize,
    /// What was wrong.
    pub reason: String,
}

/// A parsed selector expression.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Expr {
    /// `all()`: every endpoint.
    All,
    /// `has(k)`.
    Has(String),
    /// `k == 'v'`.
    Equals(String, String),
    /// `k != 'v'` (true when `k` is absent).
    NotEquals(String, String),
    /// `k in {..}`.
    In(String, BTreeSet<String>),
    /// `k not in {..}` (true when `k` is absent).
    NotIn(String, BTreeSet<String>),
    /// `!e`.
    Not(Box<Expr>),
    /// `a && b`.
    And(Box<Expr>, Box<Expr>),
    /// `a || b`.
    Or(Box<Expr>, Box<Expr>),
}

/// A parsed, canonical selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    expr: Expr,
}

impl Selector {
    /// Parses `text`. An empty (or all-blank) text is an error: callers decide what an absent
    /// selector means (for a policy, `all()`; for a rule, no constraint).
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let mut parser = Parser { text, pos: 0 };
        parser.skip_blanks();
        if parser.at_end() {
            return Err(parser.error("empty selector"));
        }
        let expr = parser.or()?;
        parser.skip_blanks();
        if !parser.at_end() {
            return Err(parser.error("unexpected text after the expression"));
        }
        Ok(Selector { expr })
    }

    /// `all()`.
    pub fn all() -> Selector {
        Selector { expr: Expr::All }
    }

    /// The expression tree.
    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// Whether an endpoint with these labels is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.expr.matches(labels)
    }

    /// `self && other`.
    pub fn and(&self, other: &Selector) -> Selector {
        Selector {
            expr: Expr::And(Box::new(self.expr.clone()), Box::new(other.expr.clone())),
        }
    }
}

impl Expr {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Expr::All => true,
            Expr::Has(k) => labels.contains_key(k),
            Expr::Equals(k, v) => labels.get(k) == Some(v),
            Expr::NotEquals(k, v) => labels.get(k) != Some(v),
            Expr::In(k, set) => labels.get(k).is_some_and(|v| set.contains(v)),
            Expr::NotIn(k, set) => !labels.get(k).is_some_and(|v| set.contains(v)),
            Expr::Not(e) => !e.matches(labels),
            Expr::And(a, b) => a.matches(labels) && b.matches(labels),
            Expr::Or(a, b) => a.matches(labels) || b.matches(labels),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.expr)
    }
}

fn write_set(f: &mut fmt::Formatter<'_>, set: &BTreeSet<String>) -> fmt::Result {
    write!(f, "{{")?;
    for (i, v) in set.iter().enumerate() {
        if i > 0 {
            write!(f, ", ")?;
        }
        write!(f, "{v:?}")?;
    }
    write!(f, "}}")
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::All => write!(f, "all()"),
            Expr::Has(k) => write!(f, "has({k})"),
            Expr::Equals(k, v) => write!(f, "{k} == {v:?}"),
            Expr::NotEquals(k, v) => write!(f, "{k} != {v:?}"),
            Expr::In(k, set) => {
                write!(f, "{k} in ")?;
                write_set(f, set)
            }
            Expr::NotIn(k, set) => {
                write!(f, "{k} not in ")?;
                write_set(f, set)
            }
            Expr::Not(e) => write!(f, "!({e})"),
            Expr::And(a, b) => write!(f, "({a} && {b})"),
            Expr::Or(a, b) => write!(f, "({a} || {b})"),
        }
    }
}

/// Longest label key or value accepted (Kubernetes allows a 253-byte prefix plus a 63-byte name).
const MAX_TOKEN: usize = 320;
/// Deepest nesting of `!` and parentheses accepted (keeps recursion bounded on hostile input).
const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, reason: impl Into<String>) -> SelectorError {
        SelectorError {
            text: self.text.to_owned(),
            position: self.pos,
            reason: reason.into(),
        }
    }

    fn rest(&self) -> &str {
        self.text.get(self.pos..).unwrap_or("")
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    fn skip_blanks(&mut self) {
        let rest = self.rest();
        let trimmed = rest.trim_start_matches([' ', '\t', '\n', '\r']);
        self.pos += rest.len() - trimmed.len();
    }

    /// Consumes `token` (after blanks) if it comes next.
    fn eat(&mut self, token: &str) -> bool {
        self.skip_blanks();
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: &str) -> Result<(), SelectorError> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(self.error(format!("expected {token:?}")))
        }
    }

    fn or(&mut self) -> Result<Expr, SelectorError> {
        self.or_at(0)
    }

    fn or_at(&mut self, depth: usize) -> Result<Expr, SelectorError> {
        let mut left = self.and(depth)?;
        while self.eat("||") {
            let right = self.and(depth)?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Expr, SelectorError> {
        let mut left = self.unary(depth)?;
        while self.eat("&&") {
            let right = self.unary(depth)?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, SelectorError> {
        if depth > MAX_DEPTH {
            return Err(self.error("expression nested too deeply"));
        }
        self.skip_blanks();
        if self.rest().starts_with("!=") {
            return Err(self.error("expected an expression, found \"!=\""));
        }
        if self.eat("!") {
            return Ok(Expr::Not(Box::new(self.unary(depth + 1)?)));
        }
        if self.eat("(") {
            let inner = self.or_at(depth + 1)?;
            self.expect(")")?;
            return Ok(inner);
        }
        let start = self.pos;
        let word = self.key()?;
        self.skip_blanks();
        if self.rest().starts_with('(') {
            return self.function(start, &word);
        }
        if self.eat("==") {
            return Ok(Expr::Equals(word, self.string()?));
        }
        if self.eat("!=") {
            return Ok(Expr::NotEquals(word, self.string()?));
        }
        if self.keyword("in") {
            return Ok(Expr::In(word, self.set()?));
        }
        if self.keyword("not") {
            if !self.keyword("in") {
                return Err(self.error("expected \"in\" after \"not\""));
            }
            return Ok(Expr::NotIn(word, self.set()?));
        }
        Err(self.error(format!(
            "expected \"==\", \"!=\", \"in\" or \"not in\" after label {word:?}"
        )))
    }

    /// `all()` or `has(k)`; anything else is not supported.
    fn function(&mut self, start: usize, name: &str) -> Result<Expr, SelectorError> {
        self.expect("(")?;
        match name {
            "all" => {
                self.expect(")")?;
                Ok(Expr::All)
            }
            "has" => {
                self.skip_blanks();
                let key = self.key()?;
                self.expect(")")?;
                Ok(Expr::Has(key))
            }
            other => {
                self.pos = start;
                Err(self.error(format!("unsupported function {other:?}()")))
            }
        }
    }

    /// A keyword followed by a non-key character.
    fn keyword(&mut self, word: &str) -> bool {
        self.skip_blanks();
        let rest = self.rest();
        let follows_key_char = rest
            .get(word.len()..)
            .and_then(|r| r.chars().next())
            .is_some_and(is_key_char);
        if rest.starts_with(word) && !follows_key_char {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    /// A label key: letters, digits, `_`, `-`, `.` and `/`.
    fn key(&mut self) -> Result<String, SelectorError> {
        self.skip_blanks();
        let rest = self.rest();
        let len = rest.find(|c: char| !is_key_char(c)).unwrap_or(rest.len());
        if len == 0 {
            return Err(match rest.chars().next() {
                Some(c) => self.error(format!("unexpected character {c:?}")),
                None => self.error("unexpected end of selector"),
            });
        }
        if len > MAX_TOKEN {
            return Err(self.error("label key too long"));
        }
        let key = rest[..len].to_owned();
        self.pos += len;
        Ok(key)
    }

    fn string(&mut self) -> Result<String, SelectorError> {
        self.skip_blanks();
        let mut chars = self.rest().chars();
        let quote = match chars.next() {
            Some(q @ ('\'' | '"')) => q,
            _ => return Err(self.error("expected a quoted string")),
        };
        let body = &self.rest()[1..];
        let Some(end) = body.find(quote) else {
            return Err(self.error("unterminated string"));
        };
        if end > MAX_TOKEN {
            return Err(self.error("label value too long"));
        }
        let value = body[..end].to_owned();
        self.pos += end + 2;
        Ok(value)
    }

    fn set(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        self.expect("{")?;
        let mut set = BTreeSet::new();
        if self.eat("}") {
            return Ok(set);
        }
        loop {
            set.insert(self.string()?);
            if self.eat("}") {
                return Ok(set);
            }
            self.expect(",")?;
        }
    }
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn sel(text: &str) -> Selector {
        Selector::parse(text).unwrap()
    }

    #[test]
    fn networking_calico_sg_selector() {
        let s = sel("has(sg.projectcalico.org/openstack-751d740a-b52b-46d9-bca8-a21e75c8a727)");
        let member = labels(&[(
            "sg.projectcalico.org/openstack-751d740a-b52b-46d9-bca8-a21e75c8a727",
            "web",
        )]);
        assert!(s.matches(&member));
        assert!(!s.matches(&labels(&[("sg.projectcalico.org/openstack-other", "x")])));
    }

    #[test]
    fn operators_follow_calico_semantics() {
        let l = labels(&[("a", "1"), ("b", "x")]);
        let cases = [
            ("all()", true),
            ("has(a)", true),
            ("!has(a)", false),
            ("has(zz)", false),
            ("a == '1'", true),
            ("a == \"2\"", false),
            ("a != '2'", true),
            ("missing != 'v'", true),
            ("b in {'x', 'y'}", true),
            ("b in {}", false),
            ("b not in {'x'}", false),
            ("missing not in {'x'}", true),
            ("missing in {'x'}", false),
            ("has(a) && b == 'x'", true),
            ("has(a) && b == 'y'", false),
            ("has(zz) || b == 'x'", true),
            ("!(has(a) && has(b))", false),
            ("has(zz) || has(a) && has(zz)", false),
            ("(has(zz) || has(a)) && has(b)", true),
            ("!!has(a)", true),
        ];
        for (text, want) in cases {
            assert_eq!(sel(text).matches(&l), want, "{text}");
        }
    }

    #[test]
    fn and_binds_tighter_than_or() {
        assert_eq!(
            sel("has(a) || has(b) && has(c)"),
            sel("has(a) || (has(b) && has(c))")
        );
    }

    #[test]
    fn canonical_form_round_trips_and_unifies_spellings() {
        let a = sel("  has( x )&&k in {'b','a'} ");
        let b = sel("has(x) && k in {\"a\", \"b\"}");
        assert_eq!(a, b);
        assert_eq!(a.to_string(), b.to_string());
        assert_eq!(sel(&a.to_string()), a);
        let odd = sel("!(a not in {'1'}) || k != 'v' && all()");
        assert_eq!(sel(&odd.to_string()), odd);
    }

    #[test]
    fn rejects_everything_else_with_a_reason() {
        let bad = [
            ("", "empty selector"),
            ("   ", "empty selector"),
            ("has(a", "expected \")\""),
            ("has()", "unexpected character ')'"),
            ("a = 'b'", "expected \"==\""),
            ("a == b", "expected a quoted string"),
            ("a == 'b", "unterminated string"),
            ("a in ('b')", "expected \"{\""),
            ("a in {'b' 'c'}", "expected \",\""),
            ("a not {'b'}", "expected \"in\" after \"not\""),
            ("global()", "unsupported function \"global\"()"),
            ("a contains 'x'", "expected \"==\""),
            ("has(a) &&", "unexpected end of selector"),
            ("has(a) has(b)", "unexpected text after the expression"),
            ("has(a) & has(b)", "unexpected text after the expression"),
            ("(has(a)", "expected \")\""),
            ("!= 'x'", "found \"!=\""),
            ("has(a) || é", "unexpected character 'é'"),
        ];
        for (text, reason) in bad {
            let err = Selector::parse(text).unwrap_err();
            assert!(
                err.reason.contains(reason),
                "{text:?}: got {:?}, wanted {reason:?}",
                err.reason
            );
            assert!(err.to_string().contains(&format!("{text:?}")));
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!("{}has(a){}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(Selector::parse(&deep).is_err());
        let nots = format!("{}has(a)", "!".repeat(10_000));
        assert!(Selector::parse(&nots).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A deterministic sweep of short inputs over the selector alphabet.
        let alphabet: Vec<char> = "ah(){}'\"!=&|, in\u{e9}".chars().collect();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 16) as usize;
            let text: String = (0..len)
                .map(|i| alphabet[((seed >> (i * 4)) as usize + i) % alphabet.len()])
                .collect();
            let _ = Selector::parse(&text);
        }
    }
}
