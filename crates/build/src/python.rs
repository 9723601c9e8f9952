//! Python: a virtualenv per set of requirements, built with uv when the server has it (many
//! times faster than pip), poetry for a poetry project, pip otherwise.

use crate::detect::Runtime;
use crate::plan::{BuildPlan, DependencyStep, Placement, PlanContext, Tool};
use crate::wsgi::WsgiServer;

/// The interpreter to build with: `PYTHON_VERSION` or `.python-version` when they name an
/// installed version, `python3` when they name none.
pub fn interpreter(ctx: &PlanContext<'_>) -> Result<String, String> {
    let (wanted, source) = match ctx.knob("PYTHON_VERSION") {
        Some(v) => (v.to_owned(), "PYTHON_VERSION"),
        None => match ctx
            .python_version_file
            .and_then(|t| t.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')))
        {
            Some(v) => (v.to_owned(), ".python-version"),
            None => return Ok("python3".to_owned()),
        },
    };
    let version = wanted.trim_start_matches("python").trim_start_matches("cpython-");
    let mut parts = version.split('.');
    let (major, minor) = (parts.next().unwrap_or(""), parts.next());
    if major != "3" {
        return Err(format!(
            "{source} asks for Python {wanted}, but Berth builds Python 3 apps; set it to one of: {}",
            ctx.pythons.join(", ")
        ));
    }
    let Some(minor) = minor else { return Ok("python3".to_owned()) };
    let short = format!("3.{minor}");
    if ctx.pythons.contains(&short) {
        Ok(format!("python{short}"))
    } else {
        let installed =
            if ctx.pythons.is_empty() { "none".to_owned() } else { ctx.pythons.join(", ") };
        Err(format!(
            "{source} asks for Python {wanted}, which this server does not have (installed: \
             {installed}); install python{short} or change {source}"
        ))
    }
}

pub fn plan(ctx: &PlanContext<'_>, runtime: Runtime) -> Result<BuildPlan, String> {
    let python = interpreter(ctx)?;
    let use_uv = (ctx.has_tool)("uv");
    let use_poetry = runtime == Runtime::PythonProject
        && ctx.has_file("poetry.lock")
        && (ctx.has_tool)("poetry");
    let wsgi = ctx.procfile.get("wsgi").map(|_| WsgiServer::from_env(ctx.env));

    let mut inputs = Vec::new();
    let mut commands = Vec::new();
    let manager;
    match runtime {
        Runtime::PythonProject => {
            inputs.extend(["pyproject.toml", "uv.lock", "poetry.lock"].map(String::from));
            if use_poetry {
                manager = "poetry";
                commands.push(format!("{python} -m venv \"$BERTH_DEPS\""));
                commands.push("VIRTUAL_ENV=\"$BERTH_DEPS\" poetry install --no-root --only main --no-interaction".to_owned());
            } else if use_uv {
                manager = "uv";
                let frozen = if ctx.has_file("uv.lock") { " --frozen" } else { "" };
                commands.push(format!(
                    "UV_PROJECT_ENVIRONMENT=\"$BERTH_DEPS\" uv sync --no-dev --python {python}{frozen}"
                ));
            } else {
                manager = "pip";
                commands.push(format!("{python} -m venv \"$BERTH_DEPS\""));
                commands.push(
                    "\"$BERTH_DEPS/bin/pip\" install --disable-pip-version-check .".to_owned(),
                );
            }
        }
        _ => {
            inputs.push("requirements.txt".to_owned());
            if use_uv {
                manager = "uv";
                commands.push(format!("uv venv --quiet --python {python} \"$BERTH_DEPS\""));
                commands.push(
                    "VIRTUAL_ENV=\"$BERTH_DEPS\" uv pip install -r requirements.txt".to_owned(),
                );
            } else {
                manager = "pip";
                commands.push(format!("{python} -m venv \"$BERTH_DEPS\""));
                commands.push(
                    "\"$BERTH_DEPS/bin/pip\" install --disable-pip-version-check -r requirements.txt".to_owned(),
                );
            }
        }
    }
    if let Some(server) = wsgi {
        // The WSGI server goes into the app's own venv, so it runs with the app's packages; when
        // the requirements already list it, this is a no-op that needs no download.
        let package = server.package();
        commands.push(if manager == "uv" {
            format!("VIRTUAL_ENV=\"$BERTH_DEPS\" uv pip install {package}")
        } else {
            format!("\"$BERTH_DEPS/bin/pip\" install --disable-pip-version-check {package}")
        });
    }

    let mut plan =
        BuildPlan::new(runtime, format!("Python app ({}, {manager}, {python})", inputs[0]));
    plan.tools.push(Tool::new(&python, if python == "python3" { "python3-venv" } else { &python }));
    match manager {
        "uv" => plan.tools.push(Tool::new("uv", "python3-uv (or pipx install uv)")),
        "poetry" => plan.tools.push(Tool::new("poetry", "python3-poetry")),
        _ => {}
    }
    plan.dependencies = Some(DependencyStep {
        cache_name: "venv".to_owned(),
        inputs,
        key_commands: vec![format!("{python} --version")],
        key_extra: format!("{manager} {}", wsgi.map(|s| s.package()).unwrap_or("")),
        commands,
        placement: Placement::InCache,
    });
    plan.process_env.push(("VIRTUAL_ENV".to_owned(), "{deps}".to_owned()));
    plan.process_env.push(("PYTHONUNBUFFERED".to_owned(), "1".to_owned()));
    plan.path_prefix.push("{deps}/bin".to_owned());
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use crate::plan::tests::plan_with;
    use crate::plan::{BuildPlan, Placement};

    fn commands(plan: &BuildPlan) -> Vec<String> {
        plan.dependencies.as_ref().unwrap().commands.clone()
    }

    #[test]
    fn requirements_use_pip_without_uv_and_uv_with_it() {
        let pip =
            plan_with(&["requirements.txt"], &[], &["python3"], "web: python3 app.py\n").unwrap();
        assert_eq!(pip.summary, "Python app (requirements.txt, pip, python3)");
        assert_eq!(
            commands(&pip),
            [
                "python3 -m venv \"$BERTH_DEPS\"",
                "\"$BERTH_DEPS/bin/pip\" install --disable-pip-version-check -r requirements.txt"
            ]
        );
        let deps = pip.dependencies.as_ref().unwrap();
        assert_eq!(deps.placement, Placement::InCache);
        assert_eq!(deps.inputs, ["requirements.txt"]);
        assert_eq!(deps.key_commands, ["python3 --version"]);
        assert!(pip.path_prefix.contains(&"{deps}/bin".to_owned()));

        let uv = plan_with(&["requirements.txt"], &[], &["python3", "uv"], "web: python3 app.py\n")
            .unwrap();
        assert_eq!(
            commands(&uv),
            [
                "uv venv --quiet --python python3 \"$BERTH_DEPS\"",
                "VIRTUAL_ENV=\"$BERTH_DEPS\" uv pip install -r requirements.txt"
            ]
        );
        assert_ne!(uv.dependencies.unwrap().key_extra, pip.dependencies.unwrap().key_extra);
    }

    #[test]
    fn wsgi_installs_its_server_into_the_venv() {
        let plan = plan_with(&["requirements.txt"], &[], &["python3"], "wsgi: app:app\n").unwrap();
        assert_eq!(
            commands(&plan).last().unwrap(),
            "\"$BERTH_DEPS/bin/pip\" install --disable-pip-version-check gunicorn"
        );
        let plan = plan_with(
            &["requirements.txt"],
            &[("WSGI_SERVER", "uwsgi")],
            &["python3", "uv"],
            "wsgi: app:app\n",
        )
        .unwrap();
        assert_eq!(
            commands(&plan).last().unwrap(),
            "VIRTUAL_ENV=\"$BERTH_DEPS\" uv pip install uwsgi"
        );
        assert!(plan.dependencies.unwrap().key_extra.contains("uwsgi"));
    }

    #[test]
    fn pyproject_picks_poetry_uv_or_pip() {
        let files = ["pyproject.toml", "poetry.lock"];
        let poetry = plan_with(&files, &[], &["python3", "poetry", "uv"], "web: x\n").unwrap();
        assert!(commands(&poetry)[1].contains("poetry install --no-root --only main"));
        let uv =
            plan_with(&["pyproject.toml", "uv.lock"], &[], &["python3", "uv"], "web: x\n").unwrap();
        assert_eq!(
            commands(&uv),
            ["UV_PROJECT_ENVIRONMENT=\"$BERTH_DEPS\" uv sync --no-dev --python python3 --frozen"]
        );
        let pip = plan_with(&["pyproject.toml"], &[], &["python3"], "web: x\n").unwrap();
        assert!(commands(&pip)[1].ends_with("install --disable-pip-version-check ."));
    }

    #[test]
    fn python_version_picks_an_installed_interpreter_or_says_which_exist() {
        let plan = plan_with(
            &["requirements.txt"],
            &[("PYTHON_VERSION", "3.11.7")],
            &["python3.11"],
            "web: x\n",
        )
        .unwrap();
        assert_eq!(commands(&plan)[0], "python3.11 -m venv \"$BERTH_DEPS\"");
        let err = plan_with(
            &["requirements.txt"],
            &[("PYTHON_VERSION", "3.9")],
            &["python3"],
            "web: x\n",
        )
        .unwrap_err();
        assert_eq!(
            err,
            "PYTHON_VERSION asks for Python 3.9, which this server does not have (installed: \
             3.11); install python3.9 or change PYTHON_VERSION"
        );
        let err = plan_with(
            &["requirements.txt"],
            &[("PYTHON_VERSION", "2.7")],
            &["python3"],
            "web: x\n",
        )
        .unwrap_err();
        assert!(err.contains("Berth builds Python 3 apps"), "{err}");
    }

    #[test]
    fn python_version_file_is_read() {
        use crate::plan::{PlanContext, plan};
        let files = vec!["requirements.txt".to_owned(), ".python-version".to_owned()];
        let env = Default::default();
        let procfile = berth_procfile::parse_procfile("web: x\n").value;
        let pythons = vec!["3.11".to_owned(), "3.12".to_owned()];
        let ctx = PlanContext {
            files: &files,
            env: &env,
            procfile: &procfile,
            has_tool: &|_| true,
            pythons: &pythons,
            python_version_file: Some("# pinned\n3.12\n"),
        };
        assert_eq!(plan(&ctx).unwrap().summary, "Python app (requirements.txt, uv, python3.12)");
    }
}
