//! "Did you mean …?" for misspelt names, with BuildKit's rule: the closest option by edit
//! distance, if it is within two edits, and none when the name is an exact match.

/// The option closest to `value` (compared without case unless `case_sensitive`), spelt in
/// `value`'s case when that is all lower or all upper case.
pub(crate) fn closest<'a>(
    value: &str,
    options: impl IntoIterator<Item = &'a str>,
    case_sensitive: bool,
) -> Option<String> {
    let wanted = if case_sensitive {
        value.to_owned()
    } else {
        value.to_lowercase()
    };
    let mut best: Option<String> = None;
    let mut distance = 3;
    for option in options {
        let option = if case_sensitive {
            option.to_owned()
        } else {
            option.to_lowercase()
        };
        if option == wanted {
            return None;
        }
        let d = strsim::levenshtein(&wanted, &option);
        if d < distance {
            distance = d;
            best = Some(option);
        }
    }
    let best = best?;
    Some(if case_sensitive {
        best
    } else if value == value.to_uppercase() {
        best.to_uppercase()
    } else {
        best
    })
}

/// `message` with ` (did you mean X?)` when an option is close to `value`.
pub(crate) fn with_hint<'a>(
    message: String,
    value: &str,
    options: impl IntoIterator<Item = &'a str>,
    case_sensitive: bool,
) -> String {
    match closest(value, options, case_sensitive) {
        Some(hint) => format!("{message} (did you mean {hint}?)"),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_names_are_suggested_in_the_given_case() {
        let instructions = ["ENTRYPOINT", "ENV", "EXPOSE", "RUN"];
        assert_eq!(
            closest("FNTRYPOINT", instructions, false).as_deref(),
            Some("ENTRYPOINT")
        );
        assert_eq!(
            closest("fntrypoint", instructions, false).as_deref(),
            Some("entrypoint")
        );
        assert_eq!(
            closest("bulid", ["build", "test"], true).as_deref(),
            Some("build")
        );
        assert_eq!(
            closest("mont", ["mount", "network"], true).as_deref(),
            Some("mount")
        );
        // Too far, or exact: nothing.
        assert_eq!(closest("xyzzy", instructions, false), None);
        assert_eq!(closest("run", instructions, false), None);
    }
}
