//! Variable expansion with BuildKit's shell-lexer rules.

use strata_dockerfile::shell::{Lexer, MAX_NESTING, NoEnv};

fn word(text: &str) -> String {
    let env = [
        ("a", "hello"),
        ("empty", ""),
        ("path", "/usr/local/lib/x.tar.gz"),
        ("sp", "x  y"),
    ];
    Lexer::new('\\').process_word(text, &env).unwrap()
}

fn word_err(text: &str) -> String {
    let env = [("a", "hello"), ("empty", "")];
    Lexer::new('\\')
        .process_word(text, &env)
        .unwrap_err()
        .message
}

#[test]
fn plain_and_braced_variables() {
    assert_eq!(word("$a ${a} $unset. $"), "hello hello . $");
    assert_eq!(word("${a}world"), "helloworld");
    assert_eq!(word("$a_x"), "", "a name runs as long as it can");
}

#[test]
fn default_and_alternative_values() {
    assert_eq!(word("${unset:-w} ${empty:-w} ${a:-w}"), "w w hello");
    assert_eq!(word("${unset-w} ${empty-w}|"), "w |");
    assert_eq!(word("${unset:+w}|${empty:+w}|${a:+w}"), "||w");
    assert_eq!(word("${unset+w}|${empty+w}"), "|w");
    assert_eq!(
        word("${unset:-${a}-x}"),
        "hello-x",
        "nested expansion in the word"
    );
}

#[test]
fn required_values() {
    assert_eq!(word("${a:?must be set}"), "hello");
    assert_eq!(word_err("${unset:?must be set}"), "unset: must be set");
    assert_eq!(word_err("${empty:?}"), "empty: is not allowed to be empty");
    assert_eq!(word_err("${unset?}"), "unset: is not allowed to be unset");
    assert_eq!(word("${empty?}|"), "|");
}

#[test]
fn prefix_and_suffix_removal() {
    assert_eq!(word("${path#*/}"), "usr/local/lib/x.tar.gz");
    assert_eq!(word("${path##*/}"), "x.tar.gz");
    assert_eq!(word("${path%.*}"), "/usr/local/lib/x.tar");
    assert_eq!(word("${path%%.*}"), "/usr/local/lib/x");
}

#[test]
fn pattern_replacement() {
    assert_eq!(word("${path/l/L}"), "/usr/Local/lib/x.tar.gz");
    assert_eq!(word("${path//l/L}"), "/usr/LocaL/Lib/x.tar.gz");
    assert_eq!(word("${a/l*/p}"), "hep");
    assert_eq!(word_err("${a/l}"), "syntax error: missing '/' in ${}");
}

#[test]
fn quotes_and_escapes() {
    assert_eq!(word("'$a' \"$a\" \\$a"), "$a hello $a");
    assert_eq!(
        word("\"a\\\"b\\n\""),
        "a\"b\\n",
        "in double quotes only \" $ and \\ are escaped"
    );
    assert_eq!(word("a\\ b"), "a b");
    let backtick = Lexer::new('`');
    assert_eq!(
        backtick.process_word("c:\\dir `$x", &NoEnv).unwrap(),
        "c:\\dir $x"
    );
}

#[test]
fn words_split_on_unquoted_whitespace_including_values() {
    let env = [("sp", "x  y")];
    let lexer = Lexer::new('\\');
    assert_eq!(
        lexer.process_words("a $sp \"$sp\" 'c d'", &env).unwrap(),
        ["a", "x", "y", "x  y", "c d"]
    );
    assert_eq!(lexer.process_word("$sp", &env).unwrap(), "x  y");
}

#[test]
fn bad_substitutions_are_errors() {
    assert_eq!(word_err("${}"), "syntax error: bad substitution");
    assert_eq!(word_err("${:a}"), "syntax error: bad substitution");
    assert_eq!(word_err("${a"), "syntax error: missing '}'");
    assert_eq!(
        word_err("${a:#x}"),
        "unsupported modifier (:#) in substitution"
    );
    assert!(word_err("'open").contains("single-quote"));
    assert!(word_err("\"open").contains("double-quote"));
}

#[test]
fn skip_unset_leaves_references_as_written() {
    let lexer = Lexer::new('\\').skip_unset(true);
    assert_eq!(
        lexer.process_word("$x ${y} ${z:-d}", &NoEnv).unwrap(),
        "$x ${y} ${z:-d}"
    );
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    let deep = "${a:-".repeat(10_000) + &"}".repeat(10_000);
    let err = Lexer::new('\\').process_word(&deep, &NoEnv).unwrap_err();
    assert!(
        err.message.contains(&format!("{MAX_NESTING} levels")),
        "{}",
        err.message
    );
    let fine = "${a:-".repeat(MAX_NESTING - 1) + "x" + &"}".repeat(MAX_NESTING - 1);
    assert_eq!(Lexer::new('\\').process_word(&fine, &NoEnv).unwrap(), "x");
}
