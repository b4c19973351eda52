//! The parser against BuildKit's rules, rule by rule.

use strata_dockerfile::{Error, parse, parse_bytes};

fn node_args(text: &str) -> Vec<String> {
    parse(text).unwrap().nodes[0].args.clone()
}

#[test]
fn instruction_names_are_case_insensitive() {
    let file = parse("from busybox\nRuN echo\nCOPY a b\n").unwrap();
    let names: Vec<_> = file.nodes.iter().map(|n| n.instruction.as_str()).collect();
    assert_eq!(names, ["from", "run", "copy"]);
}

#[test]
fn directives_are_read_only_at_the_top() {
    let file =
        parse("# syntax=docker/dockerfile:1\n#ESCAPE = `\n# check=skip=all\nFROM x\n").unwrap();
    assert_eq!(
        file.directives.syntax.as_deref(),
        Some("docker/dockerfile:1")
    );
    assert_eq!(file.directives.escape, '`');
    assert_eq!(file.directives.check.as_deref(), Some("skip=all"));

    // After a comment, a blank line or an instruction they are plain comments.
    for text in [
        "# a comment\n# escape=`\nFROM x\n",
        "\n# escape=`\nFROM x\n",
        "FROM x\n# escape=`\n",
        "# unknown=1\n# escape=`\nFROM x\n",
    ] {
        assert_eq!(parse(text).unwrap().directives.escape, '\\', "{text:?}");
    }
}

#[test]
fn a_directive_given_twice_is_an_error() {
    let err = parse("# escape=`\n# escape=\\\nFROM x\n").unwrap_err();
    assert_eq!(err.line(), 2);
    assert!(
        err.to_string().contains("only one escape parser directive"),
        "{err}"
    );
}

#[test]
fn a_bad_escape_token_is_an_error() {
    let err = parse("# escape=x\nFROM x\n").unwrap_err();
    assert!(
        err.to_string().contains("invalid escape token 'x'"),
        "{err}"
    );
}

#[test]
fn continuations_join_lines_skipping_comments_and_blank_lines() {
    let text = "RUN echo a \\\n# a comment inside\n\n  b \\\n   c\nFROM x\n";
    let file = parse(text).unwrap();
    assert_eq!(file.nodes[0].args, ["echo a   b    c"]);
    assert_eq!((file.nodes[0].start_line, file.nodes[0].end_line), (1, 5));
    assert_eq!(file.nodes[1].start_line, 6);
    assert_eq!(
        file.warnings.len(),
        1,
        "an empty continuation line is warned about"
    );
}

#[test]
fn the_backtick_escape_continues_lines() {
    let file = parse("# escape=`\nRUN dir c:\\ `\n  /b\n").unwrap();
    assert_eq!(file.nodes[0].args, ["dir c:\\   /b"]);
}

#[test]
fn crlf_and_bom_are_accepted() {
    let file = parse("\u{feff}# escape=`\r\nFROM x\r\nRUN a `\r\n b\r\n").unwrap();
    assert_eq!(file.directives.escape, '`');
    assert_eq!(file.nodes[1].args, ["a  b"]);
}

#[test]
fn exec_form_and_shell_form() {
    let run = parse("RUN [\"echo\", \"a b\"]\n").unwrap();
    assert!(run.nodes[0].json);
    assert_eq!(run.nodes[0].args, ["echo", "a b"]);
    // Looks like JSON but is not: shell form, the whole text as one argument.
    let not_json = parse("RUN [\"echo\", 'a']\n").unwrap();
    assert!(!not_json.nodes[0].json);
    assert_eq!(not_json.nodes[0].args, ["[\"echo\", 'a']"]);
    // JSON, but not all strings: an error.
    let err = parse("CMD [\"a\", 1]\n").unwrap_err();
    assert!(
        err.to_string()
            .contains("arrays must be comprised of strings only"),
        "{err}"
    );
    // COPY's shell form is split into words.
    assert_eq!(node_args("COPY  a   b\tc/\n"), ["a", "b", "c/"]);
    assert_eq!(node_args("COPY [\"a b\", \"c\"]\n"), ["a b", "c"]);
}

#[test]
fn flags_are_kept_as_written() {
    let file = parse("COPY --from=build --chown=\"1:1\" --link a b\n").unwrap();
    assert_eq!(
        file.nodes[0].flags,
        ["--from=build", "--chown=1:1", "--link"]
    );
    assert_eq!(file.nodes[0].args, ["a", "b"]);
    // `--` ends the flags.
    let file = parse("RUN --network=none -- --not-a-flag\n").unwrap();
    assert_eq!(file.nodes[0].flags, ["--network=none"]);
    assert_eq!(file.nodes[0].args, ["--not-a-flag"]);
}

#[test]
fn env_and_label_in_both_forms() {
    assert_eq!(
        node_args("ENV a=b c=\"d e\"\n"),
        ["a", "b", "=", "c", "\"d e\"", "="]
    );
    assert_eq!(
        node_args("ENV key value with  spaces\n"),
        ["key", "value with  spaces", ""]
    );
    assert_eq!(
        node_args("LABEL \"com.x\"=\"y z\" q=r\\ s\n"),
        ["\"com.x\"", "\"y z\"", "=", "q", "r\\ s", "="]
    );
    let err = parse("ENV a=b c\n").unwrap_err();
    assert!(err.to_string().contains("can't find = in `c`"), "{err}");
    let err = parse("ENV lonely\n").unwrap_err();
    assert!(
        err.to_string().contains("ENV must have two arguments"),
        "{err}"
    );
}

#[test]
fn arg_with_and_without_default() {
    assert_eq!(
        node_args("ARG a b=1 c=\"x y\"\n"),
        ["a", "b=1", "c=\"x y\""]
    );
}

#[test]
fn healthcheck_type_then_command() {
    assert_eq!(node_args("HEALTHCHECK NONE\n"), ["NONE"]);
    let file = parse("HEALTHCHECK --interval=5s CMD [\"curl\", \"-f\", \"x\"]\n").unwrap();
    assert_eq!(file.nodes[0].flags, ["--interval=5s"]);
    assert_eq!(file.nodes[0].args, ["CMD", "curl", "-f", "x"]);
    assert!(file.nodes[0].json);
    assert_eq!(
        node_args("HEALTHCHECK CMD curl -f x || exit 1\n"),
        ["CMD", "curl -f x || exit 1"]
    );
}

#[test]
fn onbuild_holds_its_trigger() {
    let file = parse("ONBUILD COPY --chown=1 . /app\n").unwrap();
    let inner = file.nodes[0].onbuild.as_ref().unwrap();
    assert_eq!(inner.instruction, "copy");
    assert_eq!(inner.flags, ["--chown=1"]);
    assert_eq!(inner.args, [".", "/app"]);
}

#[test]
fn heredocs_in_run_and_copy() {
    let text =
        "RUN <<EOF\necho $HOME\nEOF\nCOPY <<-\"A\" /a <<B /b\n\thello\n\tA\nworld\nB\nFROM x\n";
    let file = parse(text).unwrap();
    let run = &file.nodes[0];
    assert_eq!(run.args, ["<<EOF"]);
    assert_eq!(run.heredocs[0].name, "EOF");
    assert_eq!(run.heredocs[0].content, "echo $HOME\n");
    assert!(run.heredocs[0].expand);
    assert_eq!((run.start_line, run.end_line), (1, 3));

    let copy = &file.nodes[1];
    assert_eq!(copy.heredocs.len(), 2);
    assert_eq!(copy.heredocs[0].name, "A");
    assert!(copy.heredocs[0].chomp);
    assert!(
        !copy.heredocs[0].expand,
        "a quoted delimiter turns expansion off"
    );
    assert_eq!(copy.heredocs[0].content, "\thello\n");
    assert_eq!(copy.heredocs[0].text(), "hello\n");
    assert_eq!(copy.heredocs[1].content, "world\n");
    assert_eq!((copy.start_line, copy.end_line), (4, 8));
    assert_eq!(file.nodes[2].start_line, 9);
}

#[test]
fn heredocs_are_not_read_from_exec_form_or_quotes() {
    let file = parse("RUN [\"echo\", \"<<EOF\"]\nRUN echo '<<EOF'\n").unwrap();
    assert!(file.nodes.iter().all(|n| n.heredocs.is_empty()));
}

#[test]
fn an_unterminated_heredoc_is_an_error_at_its_start() {
    let err = parse("FROM x\nRUN <<EOF\necho\n").unwrap_err();
    assert_eq!(err.line(), 2);
    assert!(err.to_string().contains("unterminated heredoc"), "{err}");
}

#[test]
fn an_empty_file_is_an_error() {
    let err = parse("# only a comment\n\n").unwrap_err();
    assert!(
        err.to_string().contains("file with no instructions"),
        "{err}"
    );
}

#[test]
fn invalid_utf8_is_an_error_with_its_line() {
    let err = parse_bytes(b"FROM x\nRUN \xff\n").unwrap_err();
    assert!(
        matches!(
            err,
            Error::Syntax {
                line: 2,
                column: 5,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn errors_point_at_the_offending_text() {
    let err = parse("FROM x\nCMD   [\"a\", 1]\n").unwrap_err();
    assert_eq!((err.line(), err.column()), (2, 7));
}

#[test]
fn printing_back_parses_to_the_same_tree() {
    let text = "# syntax=docker/dockerfile:1\nFROM --platform=linux/amd64 busybox AS base\n\
                ENV a=b c=\"d e\"\nENV legacy value here\nLABEL x=y\nRUN [\"echo\", \"hi\"]\n\
                RUN <<-EOF\n\techo hi\n\tEOF\nCOPY --from=base a b /c/\nHEALTHCHECK --retries=3 CMD [\"true\"]\n\
                ONBUILD RUN echo built\nARG v=1\n";
    let first = parse(text).unwrap();
    let printed = first.to_dockerfile();
    let second = parse(&printed).unwrap();
    let strip = |f: &strata_dockerfile::Dockerfile| {
        f.nodes
            .iter()
            .map(|n| {
                (
                    n.instruction.clone(),
                    n.flags.clone(),
                    n.args.clone(),
                    n.json,
                    n.heredocs.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&first), strip(&second), "printed:\n{printed}");
    assert_eq!(first.directives, second.directives);
}

#[test]
fn flags_with_blanks_and_quotes_print_back_unchanged() {
    let file = parse("COPY --chown=\"a b\" --x=\"q\\\"\\\\\" a b\n").unwrap();
    assert_eq!(file.nodes[0].flags, ["--chown=a b", "--x=q\"\\"]);
    let again = parse(&file.to_dockerfile()).unwrap();
    assert_eq!(again.nodes[0].flags, file.nodes[0].flags);
}

/// Found by the `dockerfile` fuzz target: a byte-order mark that is not at the very start is
/// text, and printing must not move it there.
#[test]
fn a_byte_order_mark_inside_the_text_survives_printing() {
    let file = parse(" \u{feff}").unwrap();
    assert_eq!(file.nodes[0].instruction, "\u{feff}");
    let again = parse(&file.to_dockerfile()).unwrap();
    assert_eq!(again.nodes[0].instruction, "\u{feff}");
}

/// Found by the `dockerfile` fuzz target: an instruction whose text ends with the escape
/// character (the file ended inside a continuation) must not print as a continuation.
#[test]
fn text_ending_in_the_escape_character_survives_printing() {
    for text in ["#\n\\\\ ", "RUN a\\\u{c}\nRUN b\n", "# escape=`\nRUN a``"] {
        let file = parse(text).unwrap();
        let again = parse(&file.to_dockerfile()).unwrap();
        let args = |f: &strata_dockerfile::Dockerfile| {
            f.nodes
                .iter()
                .map(|n| (n.instruction.clone(), n.args.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(args(&file), args(&again), "{text:?}");
    }
}

#[test]
fn enormous_and_deeply_nested_input_gets_an_answer_not_a_crash() {
    let nested = "ONBUILD ".repeat(100_000) + "RUN x\n";
    let err = parse(&nested).unwrap_err();
    assert!(
        err.to_string().contains("ONBUILD nested more than"),
        "{err}"
    );

    let many = "FROM scratch\n".to_owned() + &"RUN echo step\n".repeat(100_000);
    assert_eq!(parse(&many).unwrap().nodes.len(), 100_001);

    let long_line = format!("RUN {}\n", "x".repeat(10 << 20));
    assert_eq!(parse(&long_line).unwrap().nodes[0].args[0].len(), 10 << 20);
}

/// Found by the `dockerfile` fuzz target: in the legacy `LABEL key value` form a key that ends
/// in the escape character must keep its value apart when printed.
#[test]
fn a_legacy_key_ending_in_the_escape_character_survives_printing() {
    let file = parse("LABEL key\\   value=x\n").unwrap();
    assert_eq!(file.nodes[0].args, ["key\\", "value=x", ""]);
    let again = parse(&file.to_dockerfile()).unwrap();
    assert_eq!(again.nodes[0].args, file.nodes[0].args);
}

/// An escaped escape character at the end of a line is text, not a line continuation
/// (BuildKit's rule): the next instruction stays an instruction.
#[test]
fn an_escaped_backslash_at_the_end_of_a_line_does_not_continue_it() {
    let file = strata_dockerfile::parse("FROM scratch\nENV C trailing\\\\backslash\\\\\nENV D=1\n")
        .unwrap();
    assert_eq!(file.nodes.len(), 3, "{:?}", file.nodes);
    assert_eq!(file.nodes[1].args[1], "trailing\\\\backslash\\\\");
    assert_eq!(file.nodes[2].instruction, "env");
    // One escape character still continues the line.
    let file = strata_dockerfile::parse("FROM scratch\nENV C a\\\n  b\n").unwrap();
    assert_eq!(file.nodes.len(), 2);
}
