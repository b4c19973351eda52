//! The syntax tree: what the text says, with line numbers, before any meaning is given to it.
//!
//! Each [`Node`] is one instruction with its flags as written and its arguments split the way
//! BuildKit's parser splits them into its node chain: JSON arrays element by element, `ENV` and
//! `LABEL` as `key, value, separator` triples (`"="` for `k=v`, `""` for the legacy `ENV k v`),
//! `HEALTHCHECK` as the type (`CMD`/`NONE`) then the command, whitespace-separated words for
//! `FROM`, `EXPOSE` and the shell forms of `COPY`, `ADD` and `VOLUME`, the whole rest of the
//! line for everything else.

use serde::Serialize;

/// The parser directives at the top of a Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Directives {
    /// `# syntax=` — the frontend image the file asks for (recorded, not acted on).
    pub syntax: Option<String>,
    /// `# escape=` — the escape character, `\` unless the file says `` ` ``.
    pub escape: char,
    /// `# check=` — the build-check settings (recorded, not acted on).
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            syntax: None,
            escape: '\\',
            check: None,
        }
    }
}

/// A here-document attached to a `RUN`, `COPY` or `ADD` instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heredoc {
    /// The delimiter word, quotes removed (`EOF` for `<<"EOF"`).
    pub name: String,
    /// The lines between the instruction and the delimiter, each with its newline, exactly as
    /// written (leading tabs are still there for `<<-`; see [`Heredoc::text`]).
    pub content: String,
    /// Whether variables in the content are expanded (false when the delimiter is quoted).
    pub expand: bool,
    /// Whether leading tabs are stripped (`<<-`).
    pub chomp: bool,
    /// The file descriptor before `<<` (`3<<EOF`), 0 when none was written.
    #[serde(skip_serializing_if = "is_zero")]
    pub file_descriptor: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Heredoc {
    /// The content as the instruction uses it: with leading tabs removed from every line when
    /// the heredoc was written `<<-`.
    pub fn text(&self) -> String {
        if !self.chomp {
            return self.content.clone();
        }
        self.content
            .split_inclusive('\n')
            .map(|line| line.trim_start_matches('\t'))
            .collect()
    }
}

/// One instruction of the syntax tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// The instruction name in lower case (`run`, `copy`, ...), as written otherwise; names
    /// BuildKit does not know are kept here and rejected by the typed layer.
    pub instruction: String,
    /// The flags (`--name=value`) before the arguments, exactly as written.
    pub flags: Vec<String>,
    /// The arguments, split as BuildKit's parser splits them (see the module documentation).
    pub args: Vec<String>,
    /// Whether the arguments were written in exec (JSON array) form.
    pub json: bool,
    /// The here-documents of the instruction, in order (for `ONBUILD`, those of its trigger).
    pub heredocs: Vec<Heredoc>,
    /// The line where the instruction starts (1-based).
    pub start_line: usize,
    /// The line where it ends, continuation lines and heredocs included.
    pub end_line: usize,
    /// For `ONBUILD`, the trigger instruction.
    pub onbuild: Option<Box<Node>>,
    /// The instruction's text with continuation lines joined, comments inside it removed.
    #[serde(skip)]
    pub original: String,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dockerfile {
    /// The parser directives.
    pub directives: Directives,
    /// The instructions in order.
    pub nodes: Vec<Node>,
    /// Things BuildKit warns about but accepts, with their lines.
    pub warnings: Vec<Warning>,
}

/// Something the parser accepted but a user would want to know about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// The line the warning is about.
    pub line: usize,
    /// What it is.
    pub message: String,
}

impl Node {
    /// Writes the instruction back as Dockerfile text that parses to the same node (lines
    /// aside), heredoc bodies and terminators included, ending with a newline.
    ///
    /// Written for the default escape character `\\`; a whole [`Dockerfile`] is written with its
    /// own.
    pub fn to_dockerfile(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, '\\');
        out
    }

    fn write(&self, out: &mut String, escape: char) {
        let start = out.len();
        self.write_line(out, escape);
        // A line ending in the escape character would read as a continuation. The parser only
        // leaves one there when other blanks followed it (a form feed, a lone carriage return
        // at the end of the file); a form feed keeps it what it was.
        if out[start..].trim_end_matches([' ', '\t']).ends_with(escape) {
            out.push('\u{c}');
        }
        out.push('\n');
        for heredoc in &self.heredocs {
            out.push_str(&heredoc.content);
            if heredoc.chomp {
                out.push('\t');
            }
            out.push_str(&heredoc.name);
            out.push('\n');
        }
    }

    fn write_line(&self, out: &mut String, escape: char) {
        out.push_str(&self.instruction.to_uppercase());
        for flag in &self.flags {
            out.push(' ');
            write_flag(out, flag);
        }
        if let Some(inner) = &self.onbuild {
            out.push(' ');
            inner.write_line(out, escape);
            return;
        }
        if self.json {
            out.push(' ');
            if self.instruction == "healthcheck" {
                if let Some((kind, rest)) = self.args.split_first() {
                    out.push_str(kind);
                    out.push(' ');
                    out.push_str(&serde_json::to_string(rest).unwrap_or_default());
                }
            } else {
                out.push_str(&serde_json::to_string(&self.args).unwrap_or_default());
            }
            return;
        }
        match self.instruction.as_str() {
            "env" | "label" => {
                for triple in self.args.chunks(3) {
                    if let [key, value, sep] = triple {
                        out.push(' ');
                        out.push_str(key);
                        // In the legacy `KEY value` form, a key ending in the escape character
                        // would escape a single blank and swallow the value into the key.
                        out.push_str(match sep.as_str() {
                            "" if key.ends_with(escape) => "  ",
                            "" => " ",
                            sep => sep,
                        });
                        out.push_str(value);
                    }
                }
            }
            _ => {
                for arg in &self.args {
                    out.push(' ');
                    out.push_str(arg);
                }
            }
        }
    }
}

/// Writes a flag so that the parser reads it back unchanged: its body quoted, with `"` and
/// `\\` escaped, when it holds blanks, quotes or backslashes.
fn write_flag(out: &mut String, flag: &str) {
    let body = flag.strip_prefix("--").unwrap_or(flag);
    if !body.contains(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '\\')) {
        out.push_str(flag);
        return;
    }
    out.push_str("--\"");
    for ch in body.chars() {
        if matches!(ch, '"' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('"');
}

impl Dockerfile {
    /// Writes the whole file back as Dockerfile text: directives, then every instruction.
    ///
    /// Parsing the text gives the same tree (lines aside) whenever every instruction's quotes
    /// balance and no instruction's text ends in the escape character; an instruction that
    /// does (the file ended inside a line continuation) is written so that it still parses,
    /// but a here-document marker just before that escape may then read differently.
    pub fn to_dockerfile(&self) -> String {
        let mut out = String::new();
        if let Some(syntax) = &self.directives.syntax {
            out.push_str(&format!("# syntax={syntax}\n"));
        }
        if self.directives.escape != '\\' {
            out.push_str(&format!("# escape={}\n", self.directives.escape));
        }
        if let Some(check) = &self.directives.check {
            out.push_str(&format!("# check={check}\n"));
        }
        for node in &self.nodes {
            node.write(&mut out, self.directives.escape);
        }
        // A byte-order mark at the very start would be dropped by the parser; one that was
        // part of an instruction's text keeps its place behind a blank.
        if out.starts_with('\u{feff}') {
            out.insert(0, ' ');
        }
        out
    }
}
