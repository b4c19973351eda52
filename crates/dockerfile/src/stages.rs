//! Stages, their dependency graph, and the scoping of `ARG` and `ENV` within them.

use std::collections::BTreeMap;

use serde::Serialize;
use strata_oci::Platform;

use crate::ast::{Dockerfile, Node};
use crate::error::{Error, Result};
use crate::instructions::{ArgDecl, Context, Instruction, Located};
use crate::shell::{Env, Lexer};

/// Build args that every build accepts without an `ARG` and that `RUN` sees, as in BuildKit.
pub const PROXY_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// What a build asks of a Dockerfile: build args, target stage, platforms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOptions {
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// The stage to build (`--target`); the last stage when `None`.
    pub target: Option<String>,
    /// The platform the image is for.
    pub target_platform: Platform,
    /// The platform the build runs on.
    pub build_platform: Platform,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            build_args: BTreeMap::new(),
            target: None,
            target_platform: Platform::host(),
            build_platform: Platform::host(),
        }
    }
}

/// What a stage starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "ref", rename_all = "lowercase")]
pub enum Base {
    /// `FROM scratch`: an empty filesystem.
    Scratch,
    /// An image reference, expanded, as written (not yet normalised).
    Image(String),
    /// An earlier stage, by index.
    Stage(usize),
}

/// One stage: `FROM ...` and the instructions up to the next `FROM`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stage {
    /// Its position among the stages, from 0.
    pub index: usize,
    /// `AS name`, lower-cased.
    pub name: Option<String>,
    /// What it starts from.
    pub base: Base,
    /// `FROM --platform`, expanded.
    pub platform: Option<String>,
    /// The line of its `FROM`.
    pub line: usize,
    /// The stages it needs: its base stage, and stages named by `COPY --from` and
    /// `RUN --mount from=`.
    pub dependencies: Vec<usize>,
    /// Its instructions as syntax nodes (see [`Plan::instructions`] for the typed ones).
    #[serde(skip)]
    pub nodes: Vec<Node>,
}

/// Which step of a build: its stage, its place in the stage, and whether it is a trigger a
/// base image's `ONBUILD` left (then `index` counts the triggers, which run first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct StepId {
    /// The stage's index.
    pub stage: usize,
    /// The step's place among the stage's instructions (or its triggers), from 0.
    pub index: usize,
    /// A base image's `ONBUILD` trigger.
    pub onbuild: bool,
}

/// One step of a stage, typed and expanded: what a build executes, with its identity and the
/// text it was written as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Which step.
    pub id: StepId,
    /// The instruction as written, trimmed (a trigger's own text, without `ONBUILD`).
    pub original: String,
    /// The typed instruction and its lines (a trigger's are its stage's `FROM` line).
    pub instruction: Located<Instruction>,
}

/// A Dockerfile resolved for one build: global args, stages, their graph, and the stages the
/// target needs, in an order where every stage comes after those it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The `ARG`s before the first `FROM`, with their values.
    pub global_args: Vec<ArgDecl>,
    /// Every stage of the file.
    pub stages: Vec<Stage>,
    /// The index of the target stage.
    pub target: usize,
    /// The stages to build, dependencies first; stages the target does not need are absent.
    pub needed: Vec<usize>,
    /// Build args given but declared nowhere in the needed stages.
    pub unused_build_args: Vec<String>,
    #[serde(skip)]
    escape: char,
    #[serde(skip)]
    options: PlanOptions,
    #[serde(skip)]
    builtin: Vec<(String, String)>,
    /// Per stage, the environment it inherits from its base stages.
    #[serde(skip)]
    inherited: Vec<EnvList>,
}

/// Variables visible during expansion inside a stage: `ENV` (base image's and the stage's)
/// wins over `ARG`.
struct Scope<'a> {
    env: &'a std::collections::HashMap<String, String>,
    args: &'a [(String, String)],
}

impl Env for Scope<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.env
            .get(name)
            .map(String::as_str)
            .or_else(|| Env::get(self.args, name))
    }
}

/// Name/value pairs in order; the last definition of a name wins.
type EnvList = Vec<(String, String)>;

fn stage_error(line: usize, message: String) -> Error {
    Error::Stage { line, message }
}

fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

impl Plan {
    /// Resolves `file` for a build with `options`.
    ///
    /// ```
    /// use strata_dockerfile::{Base, Plan, PlanOptions, parse};
    ///
    /// let file = parse("ARG V=1\nFROM busybox:$V AS one\nFROM scratch AS two\nFROM one\nCOPY --from=two / /\n")?;
    /// let plan = Plan::new(&file, &PlanOptions::default())?;
    /// assert_eq!(plan.stages[0].base, Base::Image("busybox:1".into()));
    /// assert_eq!(plan.stages[2].base, Base::Stage(0));
    /// assert_eq!(plan.needed, [0, 1, 2]);
    /// # Ok::<(), strata_dockerfile::Error>(())
    /// ```
    pub fn new(file: &Dockerfile, options: &PlanOptions) -> Result<Plan> {
        let escape = file.directives.escape;
        let lexer = Lexer::new(escape);
        let builtin = builtin_args(options);
        let mut nodes = file.nodes.iter().peekable();
        let (global_args, global_values) = global_args(&mut nodes, escape, &builtin, options)?;
        let mut from_env = builtin.clone();
        from_env.extend(global_values);
        let mut stages: Vec<Stage> = Vec::new();
        while let Some(from) = nodes.next() {
            let mut stage = stage_of(from, &stages, &from_env, &lexer)?;
            while let Some(node) = nodes.next_if(|n| n.instruction != "from") {
                stage.nodes.push(node.clone());
            }
            stages.push(stage);
        }
        if stages.is_empty() {
            let line = file.nodes.last().map_or(1, |n| n.start_line);
            return Err(stage_error(
                line,
                "dockerfile contains no stages to build (it has no FROM)".to_owned(),
            ));
        }
        let target = target_stage(options.target.as_deref(), &stages)?;
        let mut plan = Plan {
            global_args,
            stages,
            target,
            needed: Vec::new(),
            unused_build_args: Vec::new(),
            escape,
            options: options.clone(),
            builtin,
            inherited: Vec::new(),
        };
        let forward = plan.resolve_dependencies()?;
        plan.needed = plan.order()?;
        // A stage that is built reads only stages defined before it (BuildKit builds them
        // in file order); one no built stage needs may name any.
        if let Some((_, error)) = forward
            .into_iter()
            .find(|(stage, _)| plan.needed.contains(stage))
        {
            return Err(error);
        }
        plan.unused_build_args = plan.find_unused_args()?;
        Ok(plan)
    }

    /// Finds each stage's dependencies by typing its instructions, in file order, so that a
    /// stage based on another (always an earlier one) starts from that stage's final
    /// environment; an image base contributes no environment here. Returns, per stage, the
    /// first of its instructions that reads a stage defined after it.
    fn resolve_dependencies(&mut self) -> Result<Vec<(usize, Error)>> {
        let mut forward = Vec::new();
        let mut final_envs: Vec<EnvList> = Vec::with_capacity(self.stages.len());
        for index in 0..self.stages.len() {
            let inherited = match self.stages[index].base {
                Base::Stage(base) => final_envs.get(base).cloned().unwrap_or_default(),
                _ => Vec::new(),
            };
            let (instructions, final_env) = self.simulate(index, &inherited)?;
            self.inherited.push(inherited);
            final_envs.push(final_env);
            let mut dependencies = Vec::new();
            if let Base::Stage(base) = self.stages[index].base {
                dependencies.push(base);
            }
            for located in &instructions {
                // (the stage or image named, and the mount target for a RUN)
                let mut froms: Vec<(String, Option<String>)> = Vec::new();
                match &located.value {
                    Instruction::Copy(copy) => froms.extend(copy.from.clone().map(|f| (f, None))),
                    Instruction::Run(run) => froms.extend(
                        run.mounts
                            .iter()
                            .filter_map(|m| Some((m.from.clone()?, Some(m.target.clone())))),
                    ),
                    _ => {}
                }
                for (from, target) in froms {
                    if let Some(stage) = self.stage_by_reference(&from) {
                        if stage > index && !forward.iter().any(|(s, _)| *s == index) {
                            let message = match target {
                                None => format!(
                                    "cannot copy from stage \"{from}\", it needs to be defined \
                                     before current stage \"{}\"",
                                    self.stage_label(index)
                                ),
                                Some(target) => format!(
                                    "cannot mount from stage \"{from}\" to \"{target}\", stage \
                                     needs to be defined before current command"
                                ),
                            };
                            forward.push((index, stage_error(located.start_line, message)));
                        }
                        if stage == index {
                            return Err(stage_error(
                                located.start_line,
                                format!(
                                    "circular dependency detected on stage: {}",
                                    self.stage_label(index)
                                ),
                            ));
                        }
                        if !dependencies.contains(&stage) {
                            dependencies.push(stage);
                        }
                    }
                }
            }
            self.stages[index].dependencies = dependencies;
        }
        Ok(forward)
    }

    /// The stage a `--from` value names (by name or index), or `None` for an image.
    pub fn stage_by_reference(&self, reference: &str) -> Option<usize> {
        let lowered = reference.to_lowercase();
        if let Some(stage) = self
            .stages
            .iter()
            .find(|s| s.name.as_deref() == Some(lowered.as_str()))
        {
            return Some(stage.index);
        }
        reference
            .parse::<usize>()
            .ok()
            .filter(|i| *i < self.stages.len())
    }

    fn stage_label(&self, index: usize) -> String {
        self.stages[index]
            .name
            .clone()
            .unwrap_or_else(|| index.to_string())
    }

    /// Depth-first from the target; a stage is emitted after its dependencies.
    fn order(&self) -> Result<Vec<usize>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Active,
            Done,
        }
        let mut marks = vec![Mark::New; self.stages.len()];
        let mut order = Vec::new();
        // An explicit stack: a hostile file with thousands of chained stages cannot overflow.
        let mut stack = vec![(self.target, 0usize)];
        marks[self.target] = Mark::Active;
        while let Some((stage, next)) = stack.last_mut() {
            let stage = *stage;
            if let Some(&dep) = self.stages[stage].dependencies.get(*next) {
                *next += 1;
                match marks[dep] {
                    Mark::Done => {}
                    Mark::Active => {
                        return Err(stage_error(
                            self.stages[stage].line,
                            format!(
                                "circular dependency detected on stage: {}",
                                self.stage_label(dep)
                            ),
                        ));
                    }
                    Mark::New => {
                        marks[dep] = Mark::Active;
                        stack.push((dep, 0));
                    }
                }
            } else {
                marks[stage] = Mark::Done;
                order.push(stage);
                stack.pop();
            }
        }
        Ok(order)
    }

    fn find_unused_args(&self) -> Result<Vec<String>> {
        let mut declared: Vec<String> = self.global_args.iter().map(|a| a.name.clone()).collect();
        for &index in &self.needed {
            for node in &self.stages[index].nodes {
                if node.instruction == "arg" {
                    declared.extend(
                        node.args
                            .iter()
                            .map(|w| w.split('=').next().unwrap_or(w).to_owned()),
                    );
                }
            }
        }
        Ok(self
            .options
            .build_args
            .keys()
            .filter(|k| !declared.contains(k) && !PROXY_ARGS.contains(&k.as_str()))
            .cloned()
            .collect())
    }

    /// The environment a stage inherits from the stages it is based on (their `ENV`s, down the
    /// chain of stage bases); empty for a stage based on an image or `scratch`. Add the base
    /// image's own `Env` in front of it when it is known.
    pub fn inherited_env(&self, index: usize) -> &[(String, String)] {
        self.inherited.get(index).map_or(&[], Vec::as_slice)
    }

    /// The typed, expanded instructions of stage `index`, given the environment its base image
    /// provides (`Env` of the base image config; for a stage based on another stage, that
    /// stage's final environment, which the engine knows once it has built it).
    pub fn instructions(
        &self,
        index: usize,
        base_env: &[(String, String)],
    ) -> Result<Vec<Located<Instruction>>> {
        Ok(self.simulate(index, base_env)?.0)
    }

    /// The steps of stage `index`: [`Plan::instructions`] with each one's identity and text.
    pub fn steps(&self, index: usize, base_env: &[(String, String)]) -> Result<Vec<Step>> {
        let typed = self.instructions(index, base_env)?;
        let nodes = self.stages.get(index).map_or(&[][..], |s| &s.nodes[..]);
        Ok(typed
            .into_iter()
            .enumerate()
            .map(|(i, instruction)| Step {
                id: StepId {
                    stage: index,
                    index: i,
                    onbuild: false,
                },
                original: nodes.get(i).map_or("", |n| n.original.trim()).to_owned(),
                instruction,
            })
            .collect())
    }

    /// The triggers a base image's `ONBUILD` left (`triggers`, as its config lists them), as
    /// steps at the start of stage `index`: typed and expanded with the base's environment,
    /// as if they were written right after the stage's `FROM`, except that `--build-arg`
    /// values do not reach them.
    pub fn triggers(
        &self,
        index: usize,
        triggers: &[String],
        base_env: &[(String, String)],
    ) -> Result<Vec<Step>> {
        let line = self.stages.get(index).map_or(0, |s| s.line);
        let text = format!("FROM scratch\n{}\n", triggers.join("\n"));
        let file = crate::parser::parse(&text)?;
        let plan = Plan::new(
            &file,
            &PlanOptions {
                build_args: BTreeMap::new(),
                target: None,
                target_platform: self.options.target_platform.clone(),
                build_platform: self.options.build_platform.clone(),
            },
        )?;
        Ok(plan
            .instructions(0, base_env)?
            .into_iter()
            .enumerate()
            .map(|(i, mut instruction)| {
                instruction.start_line = line;
                instruction.end_line = line;
                Step {
                    id: StepId {
                        stage: index,
                        index: i,
                        onbuild: true,
                    },
                    original: triggers.get(i).map_or("", |t| t.trim()).to_owned(),
                    instruction,
                }
            })
            .collect())
    }

    /// Types every instruction of a stage in order, tracking `ENV` and `ARG`; returns them with
    /// the final environment.
    fn simulate(
        &self,
        index: usize,
        base_env: &[(String, String)],
    ) -> Result<(Vec<Located<Instruction>>, EnvList)> {
        let stage = self
            .stages
            .get(index)
            .ok_or_else(|| stage_error(0, format!("no stage {index}")))?;
        let mut env: Vec<(String, String)> = base_env.to_vec();
        // The same, for lookups (a stage with hundreds of ENVs must not make every expansion
        // a linear search).
        let mut env_index: std::collections::HashMap<String, String> =
            env.iter().cloned().collect();
        let mut args: Vec<(String, String)> = Vec::new();
        let mut out = Vec::with_capacity(stage.nodes.len());
        let globals: Vec<(String, String)> = self
            .global_args
            .iter()
            .filter_map(|a| a.value.clone().map(|v| (a.name.clone(), v)))
            .collect();
        for node in &stage.nodes {
            // Only RUN sees build args as its environment.
            let mut run_args = Vec::new();
            if node.instruction == "run" {
                run_args = args.clone();
                // The proxy args reach RUN in both spellings with one value, as BuildKit's
                // proxy environment gives them (the lower-case one wins when both are given).
                for pair in PROXY_ARGS.chunks(2) {
                    let [upper, lower] = pair else { continue };
                    let value = self
                        .options
                        .build_args
                        .get(*lower)
                        .or_else(|| self.options.build_args.get(*upper));
                    for name in [upper, lower] {
                        if let Some(value) = value
                            && !run_args.iter().any(|(k, _)| k == name)
                        {
                            run_args.push(((*name).to_owned(), value.clone()));
                        }
                    }
                }
            }
            let scope = Scope {
                env: &env_index,
                args: &args,
            };
            let given = |name: &str| self.options.build_args.contains_key(name);
            let context = Context {
                escape: self.escape,
                env: &scope,
                build_args: run_args,
                given: &given,
            };
            let lookup = |name: &str, default: Option<String>| {
                self.options
                    .build_args
                    .get(name)
                    .cloned()
                    .or(default)
                    .or_else(|| Env::get(globals.as_slice(), name).map(str::to_owned))
                    .or_else(|| Env::get(self.builtin.as_slice(), name).map(str::to_owned))
            };
            let instruction = context.instruction(node, &lookup)?;
            match &instruction {
                Instruction::Env { vars } => {
                    env_index.extend(vars.iter().cloned());
                    env.extend(vars.iter().cloned());
                }
                Instruction::Arg { args: decls } => {
                    for decl in decls {
                        args.retain(|(k, _)| *k != decl.name);
                        if let Some(value) = &decl.value {
                            args.push((decl.name.clone(), value.clone()));
                        }
                    }
                }
                _ => {}
            }
            out.push(Located {
                start_line: node.start_line,
                end_line: node.end_line,
                value: instruction,
            });
        }
        Ok((out, env))
    }

    /// The escape character of the file.
    pub fn escape(&self) -> char {
        self.escape
    }
}

fn builtin_args(options: &PlanOptions) -> Vec<(String, String)> {
    let mut args = Vec::new();
    for (prefix, platform) in [
        ("BUILD", &options.build_platform),
        ("TARGET", &options.target_platform),
    ] {
        args.push((format!("{prefix}PLATFORM"), platform.to_string()));
        args.push((format!("{prefix}OS"), platform.os.clone()));
        args.push((format!("{prefix}ARCH"), platform.architecture.clone()));
        args.push((
            format!("{prefix}VARIANT"),
            platform.variant.clone().unwrap_or_default(),
        ));
    }
    // The target stage's name as asked for (BuildKit's `TARGETSTAGE`; `default` without one).
    args.push((
        "TARGETSTAGE".to_owned(),
        options
            .target
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
    ));
    args
}

/// The `ARG`s before the first `FROM` (the global scope), and the values they have.
fn global_args(
    nodes: &mut std::iter::Peekable<std::slice::Iter<'_, Node>>,
    escape: char,
    builtin: &[(String, String)],
    options: &PlanOptions,
) -> Result<(Vec<ArgDecl>, EnvList)> {
    let mut global_args = Vec::new();
    let mut global_values: Vec<(String, String)> = Vec::new();
    // Global scope: only ARG before the first FROM.
    while let Some(node) = nodes.next_if(|n| n.instruction != "from") {
        if node.instruction != "arg" {
            return Err(stage_error(
                node.start_line,
                format!(
                    "{} is not allowed before the first FROM (no build stage in current context)",
                    node.instruction.to_uppercase()
                ),
            ));
        }
        let mut scope_values = builtin.to_vec();
        scope_values.extend(global_values.iter().cloned());
        let given = |name: &str| options.build_args.contains_key(name);
        let context = Context {
            escape,
            env: &scope_values,
            build_args: Vec::new(),
            given: &given,
        };
        let lookup =
            |name: &str, default: Option<String>| options.build_args.get(name).cloned().or(default);
        let Instruction::Arg { args } = context.instruction(node, &lookup)? else {
            continue;
        };
        for arg in args {
            if let Some(value) = &arg.value {
                global_values.push((arg.name.clone(), value.clone()));
            }
            global_args.push(arg);
        }
    }
    Ok((global_args, global_values))
}

/// The stage a `FROM` starts (without its instructions): its name, base and platform,
/// expanded with the global args; `stages` are those before it.
fn stage_of(
    from: &Node,
    stages: &[Stage],
    from_env: &[(String, String)],
    lexer: &Lexer,
) -> Result<Stage> {
    let flags = crate::flags::Flags::parse(&from.flags, crate::flags::FROM).map_err(|message| {
        Error::Instruction {
            line: from.start_line,
            column: 1,
            instruction: "FROM".to_owned(),
            message,
        }
    })?;
    let expand = |word: &str| {
        lexer
            .process_word(word, from_env)
            .map_err(|e| Error::Expansion {
                line: from.start_line,
                message: format!("FROM: expanding `{word}`: {e}"),
            })
    };
    let (image, name) = match from.args.as_slice() {
        [image] => (image, None),
        [image, as_, name] if as_.eq_ignore_ascii_case("as") => (image, Some(name.to_lowercase())),
        _ => {
            return Err(Error::Instruction {
                line: from.start_line,
                column: 1,
                instruction: "FROM".to_owned(),
                message: "FROM requires either one or three arguments (`FROM image [AS name]`)"
                    .to_owned(),
            });
        }
    };
    if let Some(name) = &name {
        if !valid_stage_name(name) {
            return Err(stage_error(
                from.start_line,
                format!(
                    "invalid name for build stage: \"{name}\", name can't start with a number or contain symbols"
                ),
            ));
        }
        if stages.iter().any(|s| s.name.as_deref() == Some(name)) {
            return Err(stage_error(
                from.start_line,
                format!("duplicate stage name \"{name}\""),
            ));
        }
    }
    let image = expand(image)?;
    if image.is_empty() {
        return Err(stage_error(
            from.start_line,
            "base name (FROM) should not be blank".to_owned(),
        ));
    }
    let lowered = image.to_lowercase();
    let base = if lowered == "scratch" {
        Base::Scratch
    } else if let Some(stage) = stages
        .iter()
        .find(|s| s.name.as_deref() == Some(lowered.as_str()))
    {
        Base::Stage(stage.index)
    } else {
        Base::Image(image)
    };
    let platform = flags.string("platform").map(|p| expand(&p)).transpose()?;
    Ok(Stage {
        index: stages.len(),
        name,
        base,
        platform,
        line: from.start_line,
        dependencies: Vec::new(),
        nodes: Vec::new(),
    })
}

/// The index of the stage `--target` names (the last stage when none), or an error with
/// the closest name.
fn target_stage(target: Option<&str>, stages: &[Stage]) -> Result<usize> {
    Ok(match target {
        None => stages.len() - 1,
        Some(name) => {
            let lowered = name.to_lowercase();
            stages
                .iter()
                .position(|s| s.name.as_deref() == Some(lowered.as_str()))
                .ok_or_else(|| {
                    stage_error(
                        0,
                        crate::suggest::with_hint(
                            format!("target stage \"{name}\" could not be found"),
                            name,
                            stages.iter().filter_map(|s| s.name.as_deref()),
                            false,
                        ),
                    )
                })?
        }
    })
}
