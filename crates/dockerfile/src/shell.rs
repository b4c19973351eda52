//! The word lexer: quotes, escapes and variable expansion with BuildKit's rules.
//!
//! BuildKit expands `$a`, `${a}` and the modifiers `${a:-w}`, `${a-w}`, `${a:+w}`, `${a+w}`,
//! `${a:?msg}`, `${a?msg}`, `${a#p}`, `${a##p}`, `${a%p}`, `${a%%p}`, `${a/p/r}` and
//! `${a//p/r}` in the words of the instructions it expands, removes quotes (`'...'` is literal,
//! `"..."` still expands `$`), and treats the escape character (`\` or `` ` ``) as the shell does.
//! [`Lexer::process_word`] gives one word (whitespace kept); [`Lexer::process_words`] splits
//! into words the way a shell would after expansion.
//!
//! ```
//! use strata_dockerfile::shell::Lexer;
//!
//! let env = [("NAME", "world"), ("FILE", "archive.tar.gz")];
//! let lexer = Lexer::new('\\');
//! assert_eq!(lexer.process_word("hello ${NAME:-nobody}", &env).unwrap(), "hello world");
//! assert_eq!(lexer.process_word("${FILE%%.*}", &env).unwrap(), "archive");
//! assert_eq!(lexer.process_words("a 'b c' \"$NAME\"", &env).unwrap(), ["a", "b c", "world"]);
//! ```

use crate::pattern::Pattern;

/// How deeply `${...}` may nest before expansion is refused: deep enough for any real
/// Dockerfile, shallow enough that hostile input cannot exhaust the stack.
pub const MAX_NESTING: usize = 64;

/// Where variable values come from during expansion.
pub trait Env {
    /// The value of `name`, or `None` when it is not set.
    fn get(&self, name: &str) -> Option<&str>;
}

impl<E: Env + ?Sized> Env for &E {
    fn get(&self, name: &str) -> Option<&str> {
        (**self).get(name)
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Env for [(K, V)] {
    fn get(&self, name: &str) -> Option<&str> {
        // The last definition wins, as with repeated ENV instructions.
        self.iter()
            .rev()
            .find(|(k, _)| k.as_ref() == name)
            .map(|(_, v)| v.as_ref())
    }
}

impl<K: AsRef<str>, V: AsRef<str>, const N: usize> Env for [(K, V); N] {
    fn get(&self, name: &str) -> Option<&str> {
        Env::get(self.as_slice(), name)
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Env for Vec<(K, V)> {
    fn get(&self, name: &str) -> Option<&str> {
        Env::get(self.as_slice(), name)
    }
}

impl Env for std::collections::HashMap<String, String> {
    fn get(&self, name: &str) -> Option<&str> {
        std::collections::HashMap::get(self, name).map(String::as_str)
    }
}

impl Env for std::collections::BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<&str> {
        std::collections::BTreeMap::get(self, name).map(String::as_str)
    }
}

/// An environment with no variables.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEnv;

impl Env for NoEnv {
    fn get(&self, _: &str) -> Option<&str> {
        None
    }
}

/// Expands and splits words. Cheap to copy; configure once, use many times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lexer {
    escape: char,
    raw_quotes: bool,
    raw_escapes: bool,
    skip_unset: bool,
    skip_quotes: bool,
}

/// Why a word could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellError {
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ShellError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ShellError {}

type ShellResult<T> = Result<T, ShellError>;

fn fail<T>(message: impl Into<String>) -> ShellResult<T> {
    Err(ShellError {
        message: message.into(),
    })
}

impl Lexer {
    /// A lexer with the given escape character (`\` by default in Dockerfiles, `` ` `` with
    /// `# escape=``).
    pub fn new(escape: char) -> Self {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_unset: false,
            skip_quotes: false,
        }
    }

    /// Keep quote characters in the result instead of removing them.
    pub fn raw_quotes(mut self, raw: bool) -> Self {
        self.raw_quotes = raw;
        self
    }

    /// Keep escape characters in the result instead of removing them.
    pub fn raw_escapes(mut self, raw: bool) -> Self {
        self.raw_escapes = raw;
        self
    }

    /// Leave references to unset variables as written (`$a`, `${a:-x}`) instead of expanding
    /// them to the empty string.
    pub fn skip_unset(mut self, skip: bool) -> Self {
        self.skip_unset = skip;
        self
    }

    /// Treat quote characters as ordinary ones: `'$a'` expands `$a` and keeps both quotes
    /// (BuildKit expands a COPY heredoc's content this way).
    pub fn skip_quotes(mut self, skip: bool) -> Self {
        self.skip_quotes = skip;
        self
    }

    /// Expands `word` into one string: quotes removed, variables replaced, whitespace kept.
    pub fn process_word(&self, word: &str, env: &(impl Env + ?Sized)) -> ShellResult<String> {
        let mut scan = Scanner::new(self, word, env, false);
        let (text, _, _) = scan.process_until(&[], self.raw_escapes)?;
        Ok(text)
    }

    /// Expands `word` and splits the result into words as a shell would: unquoted whitespace,
    /// including whitespace that came from a variable's value, separates words.
    pub fn process_words(&self, word: &str, env: &(impl Env + ?Sized)) -> ShellResult<Vec<String>> {
        let mut scan = Scanner::new(self, word, env, true);
        let (_, words, _) = scan.process_until(&[], self.raw_escapes)?;
        Ok(words)
    }
}

impl Default for Lexer {
    fn default() -> Self {
        Lexer::new('\\')
    }
}

/// Words being collected while a string is processed.
#[derive(Default)]
struct Words {
    word: String,
    words: Vec<String>,
    in_word: bool,
    /// Off when only the single word is wanted: splitting is then skipped entirely.
    enabled: bool,
}

impl Words {
    fn new(enabled: bool) -> Words {
        Words {
            enabled,
            ..Words::default()
        }
    }

    fn add_char(&mut self, ch: char) {
        if !self.enabled {
            return;
        }
        if ch.is_whitespace() {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        if !self.enabled {
            return;
        }
        self.word.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, s: &str) {
        if !self.enabled {
            return;
        }
        for ch in s.chars() {
            self.add_char(ch);
        }
    }

    fn add_raw_string(&mut self, s: &str) {
        if !self.enabled {
            return;
        }
        self.word.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(std::mem::take(&mut self.word));
        }
        self.words
    }
}

struct Scanner<'a, E: ?Sized> {
    lexer: Lexer,
    chars: Vec<char>,
    pos: usize,
    env: &'a E,
    raw_escapes: bool,
    depth: usize,
    /// Whether the top level splits words (nested `${...}` words never need splitting).
    split: bool,
}

impl<'a, E: Env + ?Sized> Scanner<'a, E> {
    fn new(lexer: &Lexer, text: &str, env: &'a E, split: bool) -> Self {
        Scanner {
            lexer: *lexer,
            chars: text.chars().collect(),
            pos: 0,
            env,
            raw_escapes: lexer.raw_escapes,
            depth: 0,
            split,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let ch = self.peek();
        if ch.is_some() {
            self.pos += 1;
        }
        ch
    }

    /// Processes until one of `stops` (consumed) or the end. Returns the text, the words, and
    /// the stop character found (`None` at the end of input, which is an error when `stops` is
    /// not empty).
    fn process_until(
        &mut self,
        stops: &[char],
        raw_escapes: bool,
    ) -> ShellResult<(String, Vec<String>, Option<char>)> {
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let result = self.process_until_inner(stops);
        self.raw_escapes = saved;
        result
    }

    fn process_until_inner(
        &mut self,
        stops: &[char],
    ) -> ShellResult<(String, Vec<String>, Option<char>)> {
        let mut result = String::new();
        let mut words = Words::new(self.split && stops.is_empty());
        while let Some(ch) = self.peek() {
            if stops.contains(&ch) {
                self.next();
                return Ok((result, words.finish(), Some(ch)));
            }
            match ch {
                '$' => {
                    let value = self.process_dollar()?;
                    result.push_str(&value);
                    words.add_string(&value);
                }
                '\'' if !self.lexer.skip_quotes => {
                    let value = self.process_single_quote()?;
                    result.push_str(&value);
                    words.add_raw_string(&value);
                }
                '"' if !self.lexer.skip_quotes => {
                    let value = self.process_double_quote()?;
                    result.push_str(&value);
                    words.add_raw_string(&value);
                }
                _ => {
                    self.next();
                    if ch == self.lexer.escape {
                        if self.raw_escapes {
                            words.add_raw_char(ch);
                            result.push(ch);
                        }
                        // The escape character escapes the next one; at the end it vanishes.
                        let Some(escaped) = self.next() else { break };
                        words.add_raw_char(escaped);
                        result.push(escaped);
                    } else {
                        words.add_char(ch);
                        result.push(ch);
                    }
                }
            }
        }
        if let Some(last) = stops.last() {
            return fail(format!(
                "unexpected end of statement while looking for matching {last}"
            ));
        }
        Ok((result, words.finish(), None))
    }

    fn process_single_quote(&mut self) -> ShellResult<String> {
        // Everything up to the next single quote is literal; a single quote cannot be escaped.
        let mut result = String::new();
        let open = self.next();
        if self.lexer.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.next() {
                None => {
                    return fail(
                        "unexpected end of statement while looking for matching single-quote",
                    );
                }
                Some('\'') => {
                    if self.lexer.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(ch) => result.push(ch),
            }
        }
    }

    fn process_double_quote(&mut self) -> ShellResult<String> {
        // Everything up to the next unescaped double quote, with `$` still expanded; the escape
        // character escapes only `"`, `$` and itself.
        let mut result = String::new();
        let open = self.next();
        if self.lexer.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.peek() {
                None => {
                    return fail(
                        "unexpected end of statement while looking for matching double-quote",
                    );
                }
                Some('"') => {
                    self.next();
                    if self.lexer.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let value = self.process_dollar()?;
                    result.push_str(&value);
                }
                Some(_) => {
                    let Some(mut ch) = self.next() else { continue };
                    if ch == self.lexer.escape {
                        match self.peek() {
                            None => continue,
                            Some(next)
                                if next == '"' || next == '$' || next == self.lexer.escape =>
                            {
                                if self.raw_escapes {
                                    result.push(ch);
                                }
                                ch = next;
                                self.next();
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_ascii_digit() {
                while let Some(digit) = self.peek().filter(char::is_ascii_digit) {
                    self.next();
                    name.push(digit);
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.next();
                return ch.to_string();
            }
            if !ch.is_alphanumeric() && ch != '_' {
                break;
            }
            self.next();
            name.push(ch);
        }
        name
    }

    fn lookup(&self, name: &str) -> Option<String> {
        self.env.get(name).map(str::to_owned)
    }

    fn process_dollar(&mut self) -> ShellResult<String> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return fail(format!(
                "variable expansion nested more than {MAX_NESTING} levels deep"
            ));
        }
        let result = self.process_dollar_inner();
        self.depth -= 1;
        result
    }

    /// One `$NAME`, `${NAME}` or `${NAME<modifier>…}`. Long on purpose: the modifier grammar
    /// (`:-`, `-`, `:+`, `+`, `:?`, `?`, `#`, `##`, `%`, `%%`, `/`, `//`) is one state
    /// machine over one character stream, as in BuildKit's lexer.
    fn process_dollar_inner(&mut self) -> ShellResult<String> {
        self.next(); // the '$'
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_owned());
            }
            return Ok(match self.lookup(&name) {
                Some(value) => value,
                None if self.lexer.skip_unset => format!("${name}"),
                None => String::new(),
            });
        }
        self.next(); // the '{'
        match self.peek() {
            None => return fail("syntax error: missing '}'"),
            Some('{' | '}' | ':') => return fail("syntax error: bad substitution"),
            Some(_) => {}
        }
        let name = self.process_name();
        let Some(op) = self.next() else {
            return fail("syntax error: missing '}'");
        };
        match op {
            '}' => Ok(match self.lookup(&name) {
                Some(value) => value,
                None if self.lexer.skip_unset => format!("${{{name}}}"),
                None => String::new(),
            }),
            ':' | '+' | '-' | '?' | '#' | '%' => {
                let mut modifier = op.to_string();
                let mut op = op;
                let null_is_unset = op == ':';
                if null_is_unset {
                    match self.next() {
                        Some(next @ ('+' | '-' | '?')) => {
                            op = next;
                            modifier.push(next);
                        }
                        Some(next) => {
                            modifier.push(next);
                            return fail(format!(
                                "unsupported modifier ({modifier}) in substitution"
                            ));
                        }
                        None => return fail("syntax error: missing '}'"),
                    }
                }
                let raw = op == '#' || op == '%';
                let word = match self.process_until(&['}'], raw) {
                    Ok((word, _, _)) => word,
                    Err(_) if self.peek().is_none() => return fail("syntax error: missing '}'"),
                    Err(e) => return Err(e),
                };
                let value = self.lookup(&name);
                if value.is_none() && self.lexer.skip_unset {
                    return Ok(format!("${{{name}{modifier}{word}}}"));
                }
                let unset = value.is_none() || (null_is_unset && value.as_deref() == Some(""));
                match op {
                    '-' => Ok(if unset {
                        word
                    } else {
                        value.unwrap_or_default()
                    }),
                    '+' => Ok(if unset { String::new() } else { word }),
                    '?' => {
                        if value.is_none() {
                            let message = if word.is_empty() {
                                "is not allowed to be unset"
                            } else {
                                &word
                            };
                            fail(format!("{name}: {message}"))
                        } else if unset {
                            let message = if word.is_empty() {
                                "is not allowed to be empty"
                            } else {
                                &word
                            };
                            fail(format!("{name}: {message}"))
                        } else {
                            Ok(value.unwrap_or_default())
                        }
                    }
                    _ => {
                        // `#`/`%` remove the shortest match, `##`/`%%` the longest.
                        let value = value.unwrap_or_default();
                        let (greedy, pattern) = match word.strip_prefix(op) {
                            Some(rest) => (true, rest),
                            None => (false, word.as_str()),
                        };
                        let pattern =
                            Pattern::new(pattern, self.lexer.escape).map_err(|e| ShellError {
                                message: format!(
                                    "invalid pattern ({pattern}) in substitution: {e}"
                                ),
                            })?;
                        Ok(if op == '#' {
                            pattern.trim_prefix(&value, greedy)
                        } else {
                            pattern.trim_suffix(&value, greedy)
                        })
                    }
                }
            }
            '/' => {
                let replace_all = self.peek() == Some('/');
                if replace_all {
                    self.next();
                }
                let pattern = match self.process_until(&['/'], true) {
                    Ok((pattern, _, _)) => pattern,
                    Err(_) if self.peek().is_none() => {
                        return fail("syntax error: missing '/' in ${}");
                    }
                    Err(e) => return Err(e),
                };
                let replacement = match self.process_until(&['}'], true) {
                    Ok((replacement, _, _)) => replacement,
                    Err(_) if self.peek().is_none() => return fail("syntax error: missing '}'"),
                    Err(e) => return Err(e),
                };
                let Some(value) = self.lookup(&name) else {
                    if self.lexer.skip_unset {
                        let slashes = if replace_all { "//" } else { "/" };
                        return Ok(format!("${{{name}{slashes}{pattern}/{replacement}}}"));
                    }
                    return Ok(String::new());
                };
                let compiled =
                    Pattern::new(&pattern, self.lexer.escape).map_err(|e| ShellError {
                        message: format!("invalid pattern ({pattern}) in substitution: {e}"),
                    })?;
                Ok(compiled.replace(&value, &replacement, replace_all))
            }
            other => fail(format!("unsupported modifier ({other}) in substitution")),
        }
    }
}
