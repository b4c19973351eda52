//! Text → syntax tree, following BuildKit's `frontend/dockerfile/parser`.

use crate::ast::{Directives, Dockerfile, Heredoc, Node, Warning};
use crate::error::{Error, Result};
use crate::shell::{Lexer, NoEnv};

/// Parses Dockerfile text into its syntax tree.
///
/// ```
/// let file = strata_dockerfile::parse("FROM alpine AS base\nRUN echo hi \\\n    there\n")?;
/// assert_eq!(file.nodes[1].instruction, "run");
/// assert_eq!(file.nodes[1].args, ["echo hi     there"]);
/// assert_eq!((file.nodes[1].start_line, file.nodes[1].end_line), (2, 3));
/// # Ok::<(), strata_dockerfile::Error>(())
/// ```
pub fn parse(text: &str) -> Result<Dockerfile> {
    Parser::new(text).run()
}

/// Parses Dockerfile bytes, refusing invalid UTF-8 with the line where it starts.
pub fn parse_bytes(bytes: &[u8]) -> Result<Dockerfile> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse(text),
        Err(e) => {
            let valid = &bytes[..e.valid_up_to()];
            let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
            let column =
                valid.len() - valid.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1) + 1;
            Err(Error::Syntax {
                line,
                column,
                message: "the Dockerfile is not valid UTF-8".to_owned(),
            })
        }
    }
}

/// How many `ONBUILD`s the parser nests before it refuses (BuildKit then rejects any nesting).
const MAX_ONBUILD_DEPTH: usize = 8;

/// Instructions whose arguments may hold here-documents.
const HEREDOC_INSTRUCTIONS: [&str; 3] = ["run", "copy", "add"];

struct Parser<'a> {
    lines: Vec<&'a str>,
    next: usize,
    directives: Directives,
    seen: Vec<String>,
    directives_done: bool,
    warnings: Vec<Warning>,
}

/// A line with its trailing `\n` or `\r\n` removed.
fn trim_newline(line: &str) -> &str {
    line.strip_suffix("\r\n")
        .or_else(|| line.strip_suffix('\n'))
        .unwrap_or(line)
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// Whitespace as BuildKit's `reWhitespace` sees it.
fn is_blank(ch: char) -> bool {
    matches!(ch, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        Parser {
            lines: text.split_inclusive('\n').collect(),
            next: 0,
            directives: Directives::default(),
            seen: Vec::new(),
            directives_done: false,
            warnings: Vec::new(),
        }
    }

    /// The next physical line and its 1-based number.
    fn next_line(&mut self) -> Option<(usize, &'a str)> {
        let line = self.lines.get(self.next).copied()?;
        self.next += 1;
        Some((self.next, line))
    }

    fn run(mut self) -> Result<Dockerfile> {
        let mut nodes = Vec::new();
        while let Some((start_line, raw)) = self.next_line() {
            let token = trim_newline(raw).trim_start();
            self.directive(token, start_line)?;
            let token = if is_comment(token) { "" } else { token };
            let (mut line, mut end_of_line) = self.trim_continuation(token);
            if end_of_line && line.is_empty() {
                continue;
            }
            let mut end_line = start_line;
            let mut empty_continuation = false;
            while !end_of_line {
                let Some((number, raw)) = self.next_line() else {
                    break;
                };
                end_line = number;
                let text = trim_newline(raw);
                if is_comment(text) {
                    continue;
                }
                if text.trim_start().is_empty() {
                    empty_continuation = true;
                    continue;
                }
                let (continuation, eol) = self.trim_continuation(text);
                line.push_str(&continuation);
                end_of_line = eol;
            }
            if empty_continuation {
                self.warnings.push(Warning {
                    line: start_line,
                    message: "empty continuation lines will become errors in a future release"
                        .to_owned(),
                });
            }
            if line.trim().is_empty() {
                continue;
            }
            let first_line = trim_newline(raw);
            let mut node = self.node_from_line(&line, start_line, first_line)?;
            if can_contain_heredoc(&node) && line.contains("<<") {
                let heredocs = heredocs_from_line(&line).map_err(|message| Error::Syntax {
                    line: start_line,
                    column: 1,
                    message,
                })?;
                for mut heredoc in heredocs {
                    let mut terminated = false;
                    while let Some((number, raw)) = self.next_line() {
                        end_line = number;
                        let mut candidate = trim_newline(raw);
                        if heredoc.chomp {
                            candidate = candidate.trim_start_matches('\t');
                        }
                        if candidate == heredoc.name {
                            terminated = true;
                            break;
                        }
                        heredoc.content.push_str(raw);
                    }
                    if !terminated {
                        return Err(Error::Syntax {
                            line: start_line,
                            column: 1,
                            message: format!(
                                "unterminated heredoc: no line `{}` ends the here-document started here",
                                heredoc.name
                            ),
                        });
                    }
                    node.heredocs.push(heredoc);
                }
            }
            node.start_line = start_line;
            node.end_line = end_line;
            nodes.push(node);
        }
        if nodes.is_empty() {
            return Err(Error::Syntax {
                line: self.lines.len().max(1),
                column: 1,
                message: "file with no instructions".to_owned(),
            });
        }
        Ok(Dockerfile {
            directives: self.directives,
            nodes,
            warnings: self.warnings,
        })
    }

    /// Recognises a parser directive while they are still allowed (before the first
    /// instruction, comment that is not a directive, or blank line).
    fn directive(&mut self, line: &str, number: usize) -> Result<()> {
        if self.directives_done {
            return Ok(());
        }
        let Some((name, value)) = parse_directive(line) else {
            self.directives_done = true;
            return Ok(());
        };
        let name = name.to_ascii_lowercase();
        if !matches!(name.as_str(), "syntax" | "escape" | "check") {
            self.directives_done = true;
            return Ok(());
        }
        if self.seen.contains(&name) {
            return Err(Error::Syntax {
                line: number,
                column: 1,
                message: format!("only one {name} parser directive can be used"),
            });
        }
        self.seen.push(name.clone());
        match name.as_str() {
            "escape" => {
                self.directives.escape = match value {
                    "\\" => '\\',
                    "`" => '`',
                    other => {
                        return Err(Error::Syntax {
                            line: number,
                            column: 1,
                            message: format!(
                                "invalid escape token '{other}' does not match ` or \\"
                            ),
                        });
                    }
                }
            }
            "syntax" => self.directives.syntax = Some(value.to_owned()),
            _ => self.directives.check = Some(value.to_owned()),
        }
        Ok(())
    }

    /// Removes a trailing escape character (and blanks after it); says whether the logical
    /// line ends here.
    ///
    /// As in BuildKit, an escape character that is itself escaped (`\\` at the end of a
    /// line) is text, not a continuation.
    fn trim_continuation(&self, line: &str) -> (String, bool) {
        let escape = self.directives.escape;
        let trimmed = line.trim_end_matches([' ', '\t']);
        match trimmed.strip_suffix(escape) {
            Some(rest) if rest.is_empty() || !rest.ends_with(escape) => (rest.to_owned(), false),
            _ => (line.to_owned(), true),
        }
    }

    fn node_from_line(&self, line: &str, number: usize, first_line: &str) -> Result<Node> {
        self.node_from_line_at(line, number, first_line, 0)
    }

    /// `depth` counts enclosing `ONBUILD`s: BuildKit rejects `ONBUILD ONBUILD` later, but the
    /// parser must not recurse without bound on `ONBUILD ONBUILD ONBUILD ...`.
    fn node_from_line_at(
        &self,
        line: &str,
        number: usize,
        first_line: &str,
        depth: usize,
    ) -> Result<Node> {
        let trimmed = line.trim();
        let (name, rest) = match trimmed.find(is_blank) {
            Some(at) => (&trimmed[..at], trimmed[at..].trim_start_matches(is_blank)),
            None => (trimmed, ""),
        };
        let (rest, flags) = extract_flags(rest);
        let rest = rest.trim();
        let instruction = name.to_lowercase();
        let syntax_error = |message: String| {
            let column = first_line.find(rest).map_or(1, |at| at + 1);
            Error::Syntax {
                line: number,
                column,
                message,
            }
        };
        let escape = self.directives.escape;
        let (args, json, onbuild) = match instruction.as_str() {
            "add" | "copy" | "volume" => {
                let (args, json) = parse_maybe_json_to_list(rest).map_err(syntax_error)?;
                (args, json, None)
            }
            "cmd" | "entrypoint" | "run" | "shell" => {
                let (args, json) = parse_maybe_json(rest).map_err(syntax_error)?;
                (args, json, None)
            }
            "arg" => (parse_words(rest, escape), false, None),
            "env" | "label" => (
                parse_name_value(rest, &instruction, escape).map_err(syntax_error)?,
                false,
                None,
            ),
            "expose" | "from" => (split_blank(rest), false, None),
            "healthcheck" => {
                let (args, json) = parse_health_config(rest).map_err(syntax_error)?;
                (args, json, None)
            }
            "onbuild" => {
                if rest.is_empty() {
                    (Vec::new(), false, None)
                } else {
                    if depth >= MAX_ONBUILD_DEPTH {
                        return Err(Error::Syntax {
                            line: number,
                            column: 1,
                            message: format!(
                                "ONBUILD nested more than {MAX_ONBUILD_DEPTH} levels deep"
                            ),
                        });
                    }
                    let inner = self.node_from_line_at(rest, number, first_line, depth + 1)?;
                    (Vec::new(), false, Some(Box::new(inner)))
                }
            }
            // maintainer, stopsignal, user, workdir, and names BuildKit does not know: the rest
            // of the line as one argument.
            _ => (
                if rest.is_empty() {
                    Vec::new()
                } else {
                    vec![rest.to_owned()]
                },
                false,
                None,
            ),
        };
        Ok(Node {
            instruction,
            flags,
            args,
            json,
            heredocs: Vec::new(),
            start_line: number,
            end_line: number,
            onbuild,
            original: line.to_owned(),
        })
    }
}

fn can_contain_heredoc(node: &Node) -> bool {
    let target = node.onbuild.as_deref().unwrap_or(node);
    HEREDOC_INSTRUCTIONS.contains(&target.instruction.as_str()) && !target.json
}

/// `# name = value` → (name, value), as BuildKit's directive expression reads it.
fn parse_directive(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix('#')?.trim_start_matches([' ', '\t']);
    let name_len = rest
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_alphabetic() || (*i > 0 && c.is_ascii_digit())))
        .map_or(rest.len(), |(i, _)| i);
    if name_len == 0 {
        return None;
    }
    let (name, rest) = rest.split_at(name_len);
    let value = rest.trim_start_matches([' ', '\t']).strip_prefix('=')?;
    let value = value.trim_matches([' ', '\t']);
    (!value.is_empty()).then_some((name, value))
}

/// Splits leading `--flag` words off `line`; returns the rest and the flags as written (quotes
/// and backslashes inside a flag are resolved, as BuildKit does).
pub(crate) fn extract_flags(line: &str) -> (&str, Vec<String>) {
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut flags = Vec::new();
    let mut i = 0;
    loop {
        while i < chars.len() && chars[i].1.is_whitespace() {
            i += 1;
        }
        if i >= chars.len() {
            return ("", flags);
        }
        let starts_flag = chars[i].1 == '-' && chars.get(i + 1).map(|c| c.1) == Some('-');
        if !starts_flag {
            return (&line[chars[i].0..], flags);
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        let mut blank_ok = false;
        while i < chars.len() {
            let ch = chars[i].1;
            match quote {
                None if ch.is_whitespace() => break,
                None if ch == '\'' || ch == '"' => {
                    quote = Some(ch);
                    blank_ok = true;
                }
                Some(q) if ch == q => quote = None,
                _ if ch == '\\' => {
                    if i + 1 < chars.len() {
                        i += 1;
                        word.push(chars[i].1);
                    }
                }
                _ => word.push(ch),
            }
            i += 1;
        }
        if word == "--" {
            let rest = chars.get(i).map_or("", |(at, _)| &line[*at..]);
            return (rest, flags);
        }
        if blank_ok || !word.is_empty() {
            flags.push(word);
        }
    }
}

/// The words of `rest`, split at unquoted whitespace, quotes and escapes kept as written.
pub(crate) fn parse_words(rest: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut blank_ok = false;
    let mut quote: Option<char> = None;
    let mut chars = rest.chars().peekable();
    while let Some(ch) = chars.next() {
        match quote {
            None => {
                if ch.is_whitespace() {
                    if in_word && (blank_ok || !word.is_empty()) {
                        words.push(std::mem::take(&mut word));
                    }
                    word.clear();
                    in_word = false;
                    blank_ok = false;
                    continue;
                }
                in_word = true;
                if ch == '\'' || ch == '"' {
                    quote = Some(ch);
                    blank_ok = true;
                }
                if ch == escape {
                    // An escape at the very end is dropped.
                    if let Some(next) = chars.next() {
                        word.push(ch);
                        word.push(next);
                    }
                    continue;
                }
                word.push(ch);
            }
            Some(q) => {
                if ch == q {
                    quote = None;
                }
                if ch == escape && q != '\'' {
                    match chars.next() {
                        Some(next) => {
                            word.push(ch);
                            word.push(next);
                        }
                        None => quote = None,
                    }
                    continue;
                }
                word.push(ch);
            }
        }
    }
    if in_word && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    words
}

fn split_blank(rest: &str) -> Vec<String> {
    if rest.is_empty() {
        return Vec::new();
    }
    rest.split(is_blank)
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

enum JsonError {
    NotJson,
    NotStrings,
}

fn parse_json(rest: &str) -> std::result::Result<Vec<String>, JsonError> {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return Err(JsonError::NotJson);
    }
    let values: Vec<serde_json::Value> =
        serde_json::from_str(rest).map_err(|_| JsonError::NotJson)?;
    values
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            _ => Err(JsonError::NotStrings),
        })
        .collect()
}

const NOT_STRINGS: &str = "when using JSON array syntax, arrays must be comprised of strings only";

/// Exec form when the text is a JSON array of strings, otherwise the whole text in shell form.
fn parse_maybe_json(rest: &str) -> std::result::Result<(Vec<String>, bool), String> {
    if rest.is_empty() {
        return Ok((Vec::new(), false));
    }
    match parse_json(rest) {
        Ok(args) => Ok((args, true)),
        Err(JsonError::NotStrings) => Err(NOT_STRINGS.to_owned()),
        Err(JsonError::NotJson) => Ok((vec![rest.to_owned()], false)),
    }
}

/// Exec form, or whitespace-separated words.
fn parse_maybe_json_to_list(rest: &str) -> std::result::Result<(Vec<String>, bool), String> {
    match parse_json(rest) {
        Ok(args) => Ok((args, true)),
        Err(JsonError::NotStrings) => Err(NOT_STRINGS.to_owned()),
        Err(JsonError::NotJson) => Ok((split_blank(rest), false)),
    }
}

/// `HEALTHCHECK TYPE rest`: the type word, then the command in exec or shell form.
fn parse_health_config(rest: &str) -> std::result::Result<(Vec<String>, bool), String> {
    let split = rest.find(char::is_whitespace).unwrap_or(rest.len());
    if split == 0 {
        return Ok((Vec::new(), false));
    }
    let (kind, command) = rest.split_at(split);
    let (mut command, json) = parse_maybe_json(command.trim_start())?;
    command.insert(0, kind.to_owned());
    Ok((command, json))
}

/// `ENV`/`LABEL` arguments as `key, value, separator` triples.
fn parse_name_value(
    rest: &str,
    instruction: &str,
    escape: char,
) -> std::result::Result<Vec<String>, String> {
    let words = parse_words(rest, escape);
    let Some(first) = words.first() else {
        return Ok(Vec::new());
    };
    if !first.contains('=') {
        // The legacy form `ENV key value with spaces`.
        let trimmed = rest.trim_start_matches(is_blank);
        let Some(at) = trimmed.find(is_blank) else {
            return Err(format!(
                "{} must have two arguments: `{rest}` has no value",
                instruction.to_uppercase()
            ));
        };
        let value = trimmed[at..].trim_start_matches(is_blank);
        return Ok(vec![
            trimmed[..at].to_owned(),
            value.to_owned(),
            String::new(),
        ]);
    }
    let mut args = Vec::with_capacity(words.len() * 3);
    for word in &words {
        let Some((key, value)) = word.split_once('=') else {
            return Err(format!(
                "syntax error - can't find = in `{word}`. Must be of the form: name=value"
            ));
        };
        args.push(key.to_owned());
        args.push(value.to_owned());
        args.push("=".to_owned());
    }
    Ok(args)
}

/// The here-documents a line opens, in order.
fn heredocs_from_line(line: &str) -> std::result::Result<Vec<Heredoc>, String> {
    let lexer = Lexer::new('\\').raw_quotes(true).raw_escapes(true);
    // A line the lexer cannot split (an unbalanced quote) opens no heredoc: BuildKit ignores
    // the error here and lets the command report it.
    let words = lexer.process_words(line, &NoEnv).unwrap_or_default();
    let mut heredocs = Vec::new();
    for word in words {
        if let Some(heredoc) = parse_heredoc(&word)? {
            heredocs.push(heredoc);
        }
    }
    Ok(heredocs)
}

/// `[fd]<<[-]WORD` → a heredoc, when `word` is one.
fn parse_heredoc(word: &str) -> std::result::Result<Option<Heredoc>, String> {
    let digits = word.chars().take_while(char::is_ascii_digit).count();
    let Some(rest) = word[digits..].strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, rest),
    };
    if rest.is_empty() || rest.contains('<') {
        return Ok(None);
    }
    let file_descriptor = if digits == 0 {
        0
    } else {
        word[..digits]
            .parse()
            .map_err(|_| format!("bad file descriptor in `{word}`"))?
    };
    let lexer = Lexer::new('\\').skip_unset(true);
    let words = lexer
        .process_words(rest, &NoEnv)
        .map_err(|e| format!("heredoc delimiter `{rest}`: {e}"))?;
    if words.len() != 1 {
        return Ok(None);
    }
    let raw = lexer
        .raw_quotes(true)
        .process_words(rest, &NoEnv)
        .map_err(|e| format!("heredoc delimiter `{rest}`: {e}"))?;
    let quotes = |s: &str| s.matches(['\'', '"']).count();
    let name = words[0].clone();
    // Quotes anywhere in the delimiter turn expansion off, as in a shell.
    let expand = raw.len() == 1 && quotes(&name) == quotes(&raw[0]);
    Ok(Some(Heredoc {
        name,
        content: String::new(),
        expand,
        chomp,
        file_descriptor,
    }))
}
