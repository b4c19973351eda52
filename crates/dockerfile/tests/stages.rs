//! Typed instructions, ARG/ENV scoping and the stage graph.

use std::collections::BTreeMap;
use std::time::Duration;

use strata_dockerfile::{
    Base, CommandLine, Healthcheck, Instruction, MountType, Network, Plan, PlanOptions, Platform,
    Sharing, parse,
};

fn plan_with(
    text: &str,
    args: &[(&str, &str)],
    target: Option<&str>,
) -> Result<Plan, strata_dockerfile::Error> {
    let file = parse(text)?;
    let options = PlanOptions {
        build_args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        target: target.map(str::to_owned),
        target_platform: "linux/arm64/v8".parse::<Platform>().unwrap(),
        build_platform: "linux/amd64".parse::<Platform>().unwrap(),
    };
    Plan::new(&file, &options)
}

fn plan(text: &str) -> Plan {
    plan_with(text, &[], None).unwrap()
}

fn last_stage(text: &str) -> Vec<Instruction> {
    let plan = plan(text);
    plan.instructions(plan.target, &[])
        .unwrap()
        .into_iter()
        .map(|l| l.value)
        .collect()
}

fn error(text: &str) -> String {
    plan_with(text, &[], None).unwrap_err().to_string()
}

#[test]
fn global_args_expand_from_lines_and_build_args_override() {
    let text = "ARG TAG=1.0\nARG IMAGE=busybox:${TAG}\nFROM $IMAGE\n";
    assert_eq!(plan(text).stages[0].base, Base::Image("busybox:1.0".into()));
    let plan = plan_with(text, &[("TAG", "2.0")], None).unwrap();
    assert_eq!(plan.stages[0].base, Base::Image("busybox:2.0".into()));
}

#[test]
fn global_args_are_reset_inside_a_stage_unless_redeclared() {
    let text = "ARG V=global\nFROM scratch\nENV A=${V}x\nARG V\nENV B=${V}x\n";
    let instructions = last_stage(text);
    assert_eq!(
        instructions[0],
        Instruction::Env {
            vars: vec![("A".into(), "x".into())]
        }
    );
    assert_eq!(
        instructions[2],
        Instruction::Env {
            vars: vec![("B".into(), "globalx".into())]
        }
    );
}

#[test]
fn env_wins_over_arg_and_build_args_override_defaults() {
    let text = "FROM scratch\nARG X=default\nENV Y=$X\nENV X=env\nARG X=again\nWORKDIR /$X\n";
    let plan = plan_with(text, &[("X", "cli")], None).unwrap();
    let instructions: Vec<_> = plan
        .instructions(0, &[])
        .unwrap()
        .into_iter()
        .map(|l| l.value)
        .collect();
    assert_eq!(
        instructions[1],
        Instruction::Env {
            vars: vec![("Y".into(), "cli".into())]
        }
    );
    assert_eq!(
        instructions[4],
        Instruction::Workdir {
            path: "/env".into()
        }
    );
}

#[test]
fn the_base_image_env_takes_part_in_expansion() {
    let plan = plan("FROM golang\nWORKDIR $GOPATH/src\n");
    let base_env = vec![("GOPATH".to_owned(), "/go".to_owned())];
    let instructions = plan.instructions(0, &base_env).unwrap();
    assert_eq!(
        instructions[0].value,
        Instruction::Workdir {
            path: "/go/src".into()
        }
    );
}

#[test]
fn platform_args_are_predefined_globally_and_declarable_in_stages() {
    let text = "FROM --platform=$BUILDPLATFORM busybox AS b\nARG TARGETARCH\nENV ARCH=$TARGETARCH OS=$TARGETOS\n";
    let plan = plan(text);
    assert_eq!(plan.stages[0].platform.as_deref(), Some("linux/amd64"));
    let instructions = plan.instructions(0, &[]).unwrap();
    assert_eq!(
        instructions[1].value,
        Instruction::Env {
            vars: vec![("ARCH".into(), "arm64".into()), ("OS".into(), "".into())]
        },
        "TARGETARCH was declared; TARGETOS was not"
    );
}

/// BuildKit's `TARGETSTAGE`: the target stage as asked for, `default` without a target.
#[test]
fn targetstage_names_the_target() {
    let text = "FROM scratch AS build\nARG TARGETSTAGE\nENV T=$TARGETSTAGE\n\
                FROM build AS final\nARG TARGETSTAGE\nENV T=$TARGETSTAGE\n";
    let env_of = |plan: &Plan, stage: usize| match &plan.instructions(stage, &[]).unwrap()[1].value
    {
        Instruction::Env { vars } => vars[0].1.clone(),
        other => panic!("{other:?}"),
    };
    let plan = plan_with(text, &[], None).unwrap();
    assert_eq!(env_of(&plan, 1), "default");
    let plan = plan_with(text, &[], Some("build")).unwrap();
    assert_eq!(env_of(&plan, 0), "build");
}

#[test]
fn run_sees_args_in_scope_and_proxy_args() {
    let plan = plan_with(
        "FROM scratch\nARG A=1\nRUN env\n",
        &[("HTTP_PROXY", "http://p"), ("UNUSED", "x")],
        None,
    )
    .unwrap();
    let Instruction::Run(run) = &plan.instructions(0, &[]).unwrap()[1].value else {
        panic!()
    };
    assert_eq!(
        run.build_args,
        [
            ("A".to_owned(), "1".to_owned()),
            ("HTTP_PROXY".to_owned(), "http://p".to_owned()),
            // The predefined proxy args reach RUN in both spellings, as in BuildKit.
            ("http_proxy".to_owned(), "http://p".to_owned())
        ]
    );
    assert_eq!(run.command, CommandLine::Shell("env".into()));
    assert_eq!(plan.unused_build_args, ["UNUSED"]);
}

#[test]
fn copy_flags_and_paths_are_typed_and_expanded() {
    let text = "FROM scratch AS build\nFROM scratch\nENV D=/app U=1000\n\
                COPY --from=build --chown=$U:$U --chmod=0755 --link --exclude=*.md a b $D/\n";
    let Instruction::Copy(copy) = &last_stage(text)[1] else {
        panic!()
    };
    assert_eq!(copy.sources, ["a", "b"]);
    assert_eq!(copy.dest, "/app/");
    assert_eq!(copy.from.as_deref(), Some("build"));
    assert_eq!(copy.chown.as_deref(), Some("1000:1000"));
    assert_eq!(copy.chmod.as_deref(), Some("0755"));
    assert!(copy.link && !copy.parents);
    assert_eq!(copy.exclude, ["*.md"]);
}

#[test]
fn copy_heredocs_become_inline_files() {
    let text =
        "FROM scratch\nENV N=world\nCOPY <<EOF <<'RAW' /dest/\nhello $N\nEOF\nhello $N\nRAW\n";
    let Instruction::Copy(copy) = &last_stage(text)[1] else {
        panic!()
    };
    assert!(copy.sources.is_empty());
    assert_eq!(copy.files[0].data, "hello world\n");
    assert_eq!(copy.files[1].data, "hello $N\n");
}

#[test]
fn copy_heredoc_content_expands_variables_only() {
    // BuildKit's rule: quotes in the content are kept as written (and `$` inside them still
    // expands), a backslash escapes the next character, even with another escape directive.
    let text = "# escape=`\nFROM scratch\nENV name=x\nCOPY <<EOF /f\n\"${name}\" '${name}' \\$name a\\\\b\nEOF\n";
    let Instruction::Copy(copy) = &last_stage(text)[1] else {
        panic!()
    };
    assert_eq!(copy.files[0].data, "\"x\" 'x' $name a\\b\n");
}

#[test]
fn add_flags() {
    let text =
        "FROM scratch\nADD --checksum=sha256:abc --keep-git-dir --unpack=false http://x/y.tgz /y\n";
    let Instruction::Add(add) = &last_stage(text)[0] else {
        panic!()
    };
    assert_eq!(add.checksum.as_deref(), Some("sha256:abc"));
    assert!(add.keep_git_dir);
    assert_eq!(add.unpack, Some(false));
    assert_eq!(add.copy.sources, ["http://x/y.tgz"]);
}

#[test]
fn run_mounts_network_and_security() {
    let text = "FROM scratch\nENV C=/cache\nRUN --mount=type=cache,target=$C,sharing=locked,mode=0700 \
                --mount=type=secret,id=token --mount=type=bind,source=src,target=/src,rw \
                --mount=type=tmpfs,target=/t,size=64m --mount=type=ssh --network=none --security=insecure make\n";
    let Instruction::Run(run) = &last_stage(text)[1] else {
        panic!()
    };
    let [cache, secret, bind, tmpfs, ssh] = run.mounts.as_slice() else {
        panic!("{:?}", run.mounts)
    };
    assert_eq!(
        (cache.kind, cache.target.as_str(), cache.sharing, cache.mode),
        (MountType::Cache, "/cache", Sharing::Locked, Some(0o700))
    );
    assert_eq!(cache.id.as_deref(), Some("/cache"));
    assert_eq!(
        (secret.kind, secret.target.as_str(), secret.readonly),
        (MountType::Secret, "/run/secrets/token", true)
    );
    assert_eq!(
        (bind.kind, bind.source.as_deref(), bind.readonly),
        (MountType::Bind, Some("src"), false)
    );
    assert_eq!((tmpfs.kind, tmpfs.size), (MountType::Tmpfs, Some(64 << 20)));
    assert_eq!(
        (ssh.kind, ssh.id.as_deref()),
        (MountType::Ssh, Some("default"))
    );
    assert_eq!(run.network, Network::None);
}

/// Cache keys hold the serialised form of mounts and networks: this pins it, so that a
/// renamed field (which would silently change every key) fails here first.
#[test]
fn the_serialised_form_of_mounts_and_networks_is_stable() {
    let text = "FROM scratch\nRUN --mount=type=cache,target=/c,sharing=locked,mode=0700,uid=1 \
                --network=none make\n";
    let Instruction::Run(run) = &last_stage(text)[0] else {
        panic!()
    };
    assert_eq!(
        serde_json::to_string(&run.mounts[0]).unwrap(),
        r#"{"type":"cache","target":"/c","source":null,"from":null,"readonly":false,"id":"/c","sharing":"locked","mode":448,"uid":1,"gid":null,"required":false,"size":null,"env":null}"#
    );
    assert_eq!(serde_json::to_string(&run.network).unwrap(), r#""none""#);
}

#[test]
fn healthcheck_options() {
    let text = "FROM scratch\nHEALTHCHECK --interval=1m30s --timeout=500ms --retries=3 CMD [\"true\"]\nHEALTHCHECK NONE\n";
    let instructions = last_stage(text);
    assert_eq!(
        instructions[0],
        Instruction::Healthcheck {
            check: Healthcheck::Check {
                test: CommandLine::Exec(vec!["true".into()]),
                interval: Some(Duration::from_secs(90)),
                timeout: Some(Duration::from_millis(500)),
                start_period: None,
                start_interval: None,
                retries: Some(3),
            }
        }
    );
    assert_eq!(
        instructions[1],
        Instruction::Healthcheck {
            check: Healthcheck::None
        }
    );
}

#[test]
fn config_instructions() {
    let text = "FROM scratch\nENV P=8080\nEXPOSE $P 53/udp 1000-2000/tcp\nUSER app:staff\nVOLUME [\"/data\", \"/logs\"]\n\
                STOPSIGNAL SIGTERM\nSHELL [\"/bin/sh\", \"-ec\"]\nENTRYPOINT [\"/init\"]\nCMD run\nLABEL a=b\n\
                ONBUILD RUN echo hi\nMAINTAINER someone\n";
    let instructions = last_stage(text);
    assert_eq!(
        instructions[1],
        Instruction::Expose {
            ports: vec!["8080".into(), "53/udp".into(), "1000-2000/tcp".into()]
        }
    );
    assert_eq!(
        instructions[2],
        Instruction::User {
            user: "app:staff".into()
        }
    );
    assert_eq!(
        instructions[3],
        Instruction::Volume {
            paths: vec!["/data".into(), "/logs".into()]
        }
    );
    assert_eq!(
        instructions[4],
        Instruction::Stopsignal {
            signal: "SIGTERM".into()
        }
    );
    assert_eq!(
        instructions[5],
        Instruction::Shell {
            shell: vec!["/bin/sh".into(), "-ec".into()]
        }
    );
    assert_eq!(
        instructions[7],
        Instruction::Cmd {
            command: CommandLine::Shell("run".into())
        }
    );
    assert_eq!(
        instructions[9],
        Instruction::Onbuild {
            trigger: "RUN echo hi".into()
        }
    );
    assert_eq!(
        instructions[10],
        Instruction::Maintainer {
            name: "someone".into()
        }
    );
}

#[test]
fn unknown_flags_and_instructions_name_themselves_and_the_line() {
    let err = plan_with("FROM scratch\nCOPY --form=x a b\n", &[], None).unwrap_err();
    assert_eq!((err.line(), err.column()), (2, 6));
    assert!(err.to_string().contains("unknown flag: --form"), "{err}");
    assert!(error("FROM scratch\nRUN --chown=1 x\n").contains("unknown flag: --chown"));
    assert!(error("FROM scratch\nENV --x=1 a=b\n").contains("unknown flag: --x"));
    assert!(error("FROM scratch\nFROBNICATE x\n").contains("unknown instruction: FROBNICATE"));
    assert!(error("FROM scratch\nCOPY --link=maybe a b\n").contains("expecting boolean value"));
    assert!(error("FROM scratch\nCOPY --from a b\n").contains("missing a value on flag: --from"));
}

#[test]
fn argument_count_errors() {
    assert!(error("FROM scratch\nCOPY onlyone\n").contains("requires at least two arguments"));
    assert!(error("FROM scratch\nRUN\n").contains("RUN requires at least one argument"));
    assert!(
        error("FROM scratch\nSHELL sh -c\n")
            .contains("SHELL requires the arguments to be in JSON form")
    );
    assert!(
        error("FROM scratch\nHEALTHCHECK NONE x\n").contains("HEALTHCHECK NONE takes no arguments")
    );
    assert!(error("FROM scratch\nHEALTHCHECK CMD\n").contains("missing command"));
    assert!(error("FROM scratch\nHEALTHCHECK BOGUS x\n").contains("unknown type `BOGUS`"));
    assert!(error("FROM scratch\nEXPOSE 80/http\n").contains("invalid port"));
    assert!(error("FROM a b\n").contains("FROM requires either one or three arguments"));
    assert!(error("ENV a=b\nFROM scratch\n").contains("not allowed before the first FROM"));
}

#[test]
fn onbuild_restrictions() {
    assert!(error("FROM scratch\nONBUILD ONBUILD RUN x\n").contains("ONBUILD ONBUILD"));
    assert!(
        error("FROM scratch\nONBUILD FROM x\n")
            .contains("FROM isn't allowed as an ONBUILD trigger")
    );
    assert!(error("FROM scratch\nONBUILD MAINTAINER x\n").contains("MAINTAINER isn't allowed"));
    assert!(error("FROM scratch\nONBUILD COPY --bogus a b\n").contains("unknown flag: --bogus"));
}

#[test]
fn expansion_errors_name_the_line() {
    // Quoted: like BuildKit, ENV splits words at unquoted blanks even inside ${...}.
    let err = plan_with(
        "FROM scratch\nENV A=\"${UNSET:?needs a value}\"\n",
        &[],
        None,
    )
    .unwrap_err();
    assert_eq!(err.line(), 2);
    assert!(err.to_string().contains("UNSET: needs a value"), "{err}");
}

#[test]
fn stage_graph_and_needed_stages() {
    let text = "FROM busybox AS base\nFROM scratch AS tools\nFROM base AS build\n\
                RUN --mount=type=bind,from=tools,target=/t make\nFROM scratch AS unused\n\
                FROM base\nCOPY --from=build /out /out\nCOPY --from=0 /x /x\n";
    let plan = plan(text);
    assert_eq!(plan.stages[2].base, Base::Stage(0));
    assert_eq!(plan.stages[2].dependencies, [0, 1]);
    assert_eq!(plan.stages[4].dependencies, [0, 2]);
    assert_eq!(plan.target, 4);
    assert_eq!(
        plan.needed,
        [0, 1, 2, 4],
        "dependencies first; `unused` skipped"
    );

    let plan = plan_with(text, &[], Some("TOOLS")).unwrap();
    assert_eq!(plan.needed, [1]);
}

#[test]
fn a_built_stage_reads_only_stages_defined_before_it() {
    // BuildKit builds stages in file order: a later stage is not there yet.
    let err = error("FROM scratch AS a\nCOPY --from=b x y\nFROM scratch AS b\nFROM a\n");
    assert!(
        err.contains(
            "cannot copy from stage \"b\", it needs to be defined before current stage \"a\""
        ),
        "{err}"
    );
    assert!(err.contains("line 2"), "{err}");
    let err = error(
        "FROM scratch AS a\nRUN --mount=from=b,target=/b true\nFROM scratch AS b\n\
                     FROM a\n",
    );
    assert!(
        err.contains("cannot mount from stage \"b\" to \"/b\", stage needs to be defined"),
        "{err}"
    );
    // A stage the build does not need may name any stage.
    let plan = plan("FROM scratch AS unused\nCOPY --from=b x y\nFROM scratch AS b\n");
    assert_eq!(plan.needed, [1]);
}

#[test]
fn stage_errors() {
    let err = plan_with("FROM scratch AS a\n", &[], Some("nope")).unwrap_err();
    assert!(
        err.to_string()
            .contains("target stage \"nope\" could not be found"),
        "{err}"
    );
    assert!(error("FROM scratch AS a\nFROM scratch AS A\n").contains("duplicate stage name \"a\""));
    assert!(error("FROM scratch AS 1a\n").contains("invalid name for build stage"));
    assert!(
        error("FROM scratch AS a\nCOPY --from=b x y\nFROM scratch AS b\nCOPY --from=a x y\n")
            .contains("circular dependency")
    );
    // The stage or image --from names is written out, never computed from a variable.
    let err = error("FROM scratch\nARG SRC=a\nCOPY --from=$SRC x y\n");
    assert!(
        err.contains("--from=$SRC: variable expansion is not supported for --from"),
        "{err}"
    );
    assert!(err.contains("line 3"), "{err}");
    let err = error("FROM scratch\nARG SRC=a\nRUN --mount=from=${SRC},target=/x true\n");
    assert!(
        err.contains("from=${SRC}: 'from' doesn't support variable expansion"),
        "{err}"
    );
    assert!(error("FROM scratch AS a\nCOPY --from=a x y\n").contains("circular dependency"));
    assert!(error("ARG A=1\n").contains("dockerfile contains no stages to build"));
}

/// An ARG's default is evaluated only when the build gives no value: its `${VAR:?message}`
/// does not fail a build that sets VAR (also for global ARGs).
#[test]
fn arg_defaults_are_evaluated_only_when_no_value_is_given() {
    let text = "ARG G=${UNSET:?global-needs-a-value}\nFROM scratch\n\
                ARG V=${UNSET:?stage-needs-a-value}\nRUN echo $V\n";
    let err = error(text);
    assert!(err.contains("global-needs-a-value"), "{err}");
    let err = plan_with(text, &[("G", "g")], None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("stage-needs-a-value"), "{err}");
    let plan = plan_with(text, &[("G", "g"), ("V", "v")], None).unwrap();
    let Instruction::Run(run) = &plan.instructions(0, &[]).unwrap()[1].value else {
        panic!()
    };
    assert!(run.build_args.contains(&("V".to_owned(), "v".to_owned())));
}

#[test]
fn stages_inherit_the_env_of_their_base_stage() {
    let plan = plan("FROM scratch AS a\nENV X=1\nFROM a\nENV Y=$X\n");
    let instructions = plan.instructions(1, &[("X".into(), "1".into())]).unwrap();
    assert_eq!(
        instructions[0].value,
        Instruction::Env {
            vars: vec![("Y".into(), "1".into())]
        }
    );
}

#[test]
fn a_long_chain_of_stages_resolves_in_linear_work() {
    let mut text = String::from("FROM scratch AS s0\nENV V0=0\n");
    for i in 1..2_000 {
        text.push_str(&format!("FROM s{} AS s{i}\nENV V{i}=$V{}\n", i - 1, i - 1));
    }
    let plan = plan(&text);
    assert_eq!(plan.needed.len(), 2_000);
    assert_eq!(plan.inherited_env(1999).len(), 1_999);
    let last = plan.instructions(1999, plan.inherited_env(1999)).unwrap();
    assert_eq!(
        last[0].value,
        Instruction::Env {
            vars: vec![("V1999".into(), "0".into())]
        }
    );
}

#[test]
fn steps_carry_their_identity_text_and_lines() {
    let plan = plan("FROM scratch AS a\nENV A=1\nRUN echo $A \\\n  two\nFROM a\nCOPY x /x\n");
    let steps = plan.steps(0, &[]).unwrap();
    let ids: Vec<(usize, usize, bool)> = steps
        .iter()
        .map(|s| (s.id.stage, s.id.index, s.id.onbuild))
        .collect();
    assert_eq!(ids, [(0, 0, false), (0, 1, false)]);
    assert_eq!(steps[0].original, "ENV A=1");
    // As BuildKit records it: continuation lines joined.
    assert_eq!(steps[1].original, "RUN echo $A   two");
    assert_eq!(
        (
            steps[1].instruction.start_line,
            steps[1].instruction.end_line
        ),
        (3, 4)
    );
    let second = plan.steps(1, &[]).unwrap();
    assert_eq!(second[0].id.stage, 1);
    assert_eq!(second[0].original, "COPY x /x");

    // A base image's ONBUILD triggers: steps of the stage at its FROM line, expanded with the
    // base's environment, told apart from the stage's own steps.
    let triggers = [
        "WORKDIR /srv/$GREETING".to_owned(),
        "COPY app /app".to_owned(),
    ];
    let base_env = [("GREETING".to_owned(), "hi".to_owned())];
    let steps = plan.triggers(1, &triggers, &base_env).unwrap();
    assert_eq!(steps.len(), 2);
    for (i, step) in steps.iter().enumerate() {
        assert_eq!(
            (step.id.stage, step.id.index, step.id.onbuild),
            (1, i, true)
        );
        assert_eq!(step.original, triggers[i]);
        assert_eq!(step.instruction.start_line, 5);
    }
    assert_eq!(
        steps[0].instruction.value,
        Instruction::Workdir {
            path: "/srv/hi".to_owned()
        }
    );
    // A trigger that is not an instruction is an error.
    assert!(plan.triggers(1, &["NOPE x".to_owned()], &[]).is_err());
}
