//! The only crate that knows the storage engine: apps, config, releases, domains, ports,
//! API tokens and basic-auth users in SQLite (WAL).
//!
//! The daemon is the only process that opens the store for writing. Types here are plain
//! records, not wire types: `berth-api` has its own.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

/// Errors from the store, with enough context to tell the user what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("app {0:?} does not exist")]
    NoSuchApp(String),
    #[error("app {0:?} already exists")]
    AppExists(String),
    #[error("{name} is already a domain of {app}")]
    DomainTaken { name: String, app: String },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot create the database file: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether the user wants the app's processes running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppState {
    Running,
    Stopped,
}

impl AppState {
    fn as_str(self) -> &'static str {
        match self {
            AppState::Running => "running",
            AppState::Stopped => "stopped",
        }
    }

    fn parse(s: &str) -> AppState {
        if s == "stopped" { AppState::Stopped } else { AppState::Running }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRecord {
    pub name: String,
    pub created_at: i64,
    pub state: AppState,
    pub current_release: Option<i64>,
    /// How many release trees are kept (`releases:keep`).
    pub keep_releases: i64,
    /// Set by `apps:lock`: deploys are refused with this reason until `apps:unlock`.
    pub lock_reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseStatus {
    Building,
    Failed,
    Succeeded,
}

impl ReleaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseStatus::Building => "building",
            ReleaseStatus::Failed => "failed",
            ReleaseStatus::Succeeded => "succeeded",
        }
    }

    fn parse(s: &str) -> ReleaseStatus {
        match s {
            "failed" => ReleaseStatus::Failed,
            "succeeded" => ReleaseStatus::Succeeded,
            _ => ReleaseStatus::Building,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRecord {
    pub app: String,
    pub number: i64,
    pub commit: String,
    pub created_at: i64,
    pub status: ReleaseStatus,
    /// Who pushed: the fingerprint of the ssh key, or "api".
    pub pushed_by: String,
    /// What the build gave the processes (JSON written by the daemon; empty before the build).
    pub build_env: String,
    /// The config vars the release runs with (a JSON object).
    pub config: String,
    /// The release whose tree and build this one runs: itself for a push, an earlier one for a
    /// config change.
    pub build_of: i64,
    /// "push" or "config".
    pub kind: String,
    /// Whether its tree was removed (`releases:keep`): it can no longer be made current.
    pub pruned: bool,
}

/// A user who may sign in to an app through the router's basic auth (`auth:set`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUserRecord {
    pub app: String,
    pub user: String,
    /// The salted slow hash of the password (never the password).
    pub password_hash: String,
    pub created_at: i64,
}

/// What a new release is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRelease<'a> {
    pub commit: &'a str,
    pub pushed_by: &'a str,
    pub kind: &'a str,
    /// `None` for a release with a build of its own.
    pub build_of: Option<i64>,
    /// JSON object of the config vars.
    pub config: &'a str,
    /// What the build gave the processes, when the build is another release's.
    pub build_env: &'a str,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS apps (
    name TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'running',
    current_release INTEGER
);
CREATE TABLE IF NOT EXISTS config (
    app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (app, key)
);
CREATE TABLE IF NOT EXISTS releases (
    app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    commit_sha TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    status TEXT NOT NULL,
    pushed_by TEXT NOT NULL DEFAULT '',
    build_env TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (app, number)
);
CREATE TABLE IF NOT EXISTS domains (
    name TEXT PRIMARY KEY,
    app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS ports (
    port INTEGER PRIMARY KEY,
    app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS basic_auth (
    app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    user TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (app, user)
);
CREATE TABLE IF NOT EXISTS scale (
    app TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    process_type TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (app, process_type)
);
";

/// The tables whose rows belong to an app (column `app`).
const APP_TABLES: [&str; 5] = ["config", "releases", "domains", "ports", "scale"];

/// Columns added after a table was first created: (table, column, definition).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("releases", "build_env", "TEXT NOT NULL DEFAULT ''"),
    ("releases", "config", "TEXT NOT NULL DEFAULT ''"),
    ("releases", "build_of", "INTEGER"),
    ("releases", "kind", "TEXT NOT NULL DEFAULT 'push'"),
    ("releases", "pruned", "INTEGER NOT NULL DEFAULT 0"),
    ("apps", "keep_releases", "INTEGER NOT NULL DEFAULT 5"),
    ("apps", "lock_reason", "TEXT"),
    ("apps", "repo_url", "TEXT"),
    ("apps", "repo_branch", "TEXT"),
];

/// Adds the columns a database created by an older Berth lacks.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    for (table, column, definition) in ADDED_COLUMNS {
        let mut stmt =
            conn.prepare(&format!("SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"))?;
        if !stmt.exists([column])? {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {definition}"))?;
        }
    }
    Ok(())
}

/// The store: one SQLite connection. Callers serialise access (the daemon holds it in a mutex;
/// every query here is a few microseconds).
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the database at `path` in WAL mode.
    pub fn open(path: &Path) -> Result<Store> {
        // Config vars hold secrets: only the daemon's user may read the database. SQLite
        // gives its -wal and -shm files the same mode as the database file.
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        Ok(Store { conn })
    }

    /// An in-memory store for tests.
    pub fn open_in_memory() -> Result<Store> {
        let conn = Connection::open_in_memory()?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        Ok(Store { conn })
    }

    pub fn create_app(&self, name: &str, now: i64) -> Result<()> {
        let n = self.conn.execute(
            "INSERT INTO apps (name, created_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            params![name, now],
        )?;
        if n == 0 {
            return Err(Error::AppExists(name.to_owned()));
        }
        Ok(())
    }

    pub fn app(&self, name: &str) -> Result<AppRecord> {
        self.conn
            .query_row(
                "SELECT name, created_at, state, current_release, keep_releases, lock_reason FROM apps WHERE name = ?1",
                [name],
                app_from_row,
            )
            .optional()?
            .ok_or_else(|| Error::NoSuchApp(name.to_owned()))
    }

    pub fn apps(&self) -> Result<Vec<AppRecord>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, created_at, state, current_release, keep_releases, lock_reason FROM apps ORDER BY name")?;
        let rows = stmt.query_map([], app_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn delete_app(&self, name: &str) -> Result<()> {
        let n = self.conn.execute("DELETE FROM apps WHERE name = ?1", [name])?;
        if n == 0 {
            return Err(Error::NoSuchApp(name.to_owned()));
        }
        Ok(())
    }

    /// Gives the app `old`, and every row of it (config, releases, domains, ports, scale), the
    /// name `new`, in one transaction. `build_env` rewrites what each release's build kept,
    /// whose paths name the app. Fails with [`Error::AppExists`] when `new` is taken.
    pub fn rename_app(
        &mut self,
        old: &str,
        new: &str,
        build_env: &dyn Fn(&str) -> String,
    ) -> Result<()> {
        self.app(old)?;
        let tx = self.conn.transaction()?;
        if tx
            .query_row("SELECT 1 FROM apps WHERE name = ?1", [new], |_| Ok(()))
            .optional()?
            .is_some()
        {
            return Err(Error::AppExists(new.to_owned()));
        }
        // The rows of the app name it: their references are checked at the commit, once they
        // all name the new one.
        tx.pragma_update(None, "defer_foreign_keys", true)?;
        tx.execute("UPDATE apps SET name = ?2 WHERE name = ?1", [old, new])?;
        for table in APP_TABLES {
            tx.execute(&format!("UPDATE {table} SET app = ?2 WHERE app = ?1"), [old, new])?;
        }
        let builds: Vec<(i64, String)> = {
            let mut stmt = tx.prepare("SELECT number, build_env FROM releases WHERE app = ?1")?;
            let rows = stmt.query_map([new], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (number, env) in builds {
            tx.execute(
                "UPDATE releases SET build_env = ?3 WHERE app = ?1 AND number = ?2",
                params![new, number, build_env(&env)],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Creates the app `new` with the config, scale, `releases:keep` and pull source of
    /// `source` (not its releases, domains or ports, which are the source's own), in one
    /// transaction.
    pub fn clone_app(&mut self, source: &str, new: &str, now: i64) -> Result<()> {
        self.app(source)?;
        let tx = self.conn.transaction()?;
        let n = tx.execute(
            "INSERT INTO apps (name, created_at, keep_releases, repo_url, repo_branch)
             SELECT ?2, ?3, keep_releases, repo_url, repo_branch FROM apps WHERE name = ?1
             ON CONFLICT DO NOTHING",
            params![source, new, now],
        )?;
        if n == 0 {
            return Err(Error::AppExists(new.to_owned()));
        }
        tx.execute(
            "INSERT INTO config (app, key, value) SELECT ?2, key, value FROM config WHERE app = ?1",
            [source, new],
        )?;
        tx.execute(
            "INSERT INTO scale (app, process_type, count)
             SELECT ?2, process_type, count FROM scale WHERE app = ?1",
            [source, new],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn set_app_state(&self, name: &str, state: AppState) -> Result<()> {
        self.update_app("UPDATE apps SET state = ?2 WHERE name = ?1", name, state.as_str())
    }

    pub fn set_current_release(&self, name: &str, number: i64) -> Result<()> {
        self.update_app("UPDATE apps SET current_release = ?2 WHERE name = ?1", name, number)
    }

    fn update_app(&self, sql: &str, name: &str, value: impl rusqlite::ToSql) -> Result<()> {
        let n = self.conn.execute(sql, params![name, value])?;
        if n == 0 {
            return Err(Error::NoSuchApp(name.to_owned()));
        }
        Ok(())
    }

    /// The app's config vars, sorted by key.
    pub fn config(&self, app: &str) -> Result<Vec<(String, String)>> {
        self.app(app)?;
        let mut stmt =
            self.conn.prepare("SELECT key, value FROM config WHERE app = ?1 ORDER BY key")?;
        let rows = stmt.query_map([app], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Sets and removes config vars in one transaction.
    pub fn update_config(
        &mut self,
        app: &str,
        set: &[(String, String)],
        unset: &[String],
    ) -> Result<()> {
        self.app(app)?;
        let tx = self.conn.transaction()?;
        for (key, value) in set {
            tx.execute(
                "INSERT INTO config (app, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (app, key) DO UPDATE SET value = excluded.value",
                params![app, key, value],
            )?;
        }
        for key in unset {
            tx.execute("DELETE FROM config WHERE app = ?1 AND key = ?2", params![app, key])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The instance counts the user set with `ps:scale`, by process type (types not listed
    /// run one instance).
    pub fn scale(&self, app: &str) -> Result<Vec<(String, u32)>> {
        self.app(app)?;
        let mut stmt = self.conn.prepare(
            "SELECT process_type, count FROM scale WHERE app = ?1 ORDER BY process_type",
        )?;
        let rows = stmt.query_map([app], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Sets instance counts for some process types, leaving the others as they are.
    pub fn set_scale(&mut self, app: &str, counts: &[(String, u32)]) -> Result<()> {
        self.app(app)?;
        let tx = self.conn.transaction()?;
        for (process_type, count) in counts {
            tx.execute(
                "INSERT INTO scale (app, process_type, count) VALUES (?1, ?2, ?3)
                 ON CONFLICT (app, process_type) DO UPDATE SET count = excluded.count",
                params![app, process_type, count],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Adds a host name to an app; a name belongs to one app at most.
    pub fn add_domain(&self, app: &str, name: &str) -> Result<()> {
        self.app(app)?;
        let owner: Option<String> = self
            .conn
            .query_row("SELECT app FROM domains WHERE name = ?1", [name], |row| row.get(0))
            .optional()?;
        match owner {
            Some(owner) if owner == app => Ok(()),
            Some(owner) => Err(Error::DomainTaken { name: name.to_owned(), app: owner }),
            None => {
                self.conn
                    .execute("INSERT INTO domains (name, app) VALUES (?1, ?2)", [name, app])?;
                Ok(())
            }
        }
    }

    /// Removes a host name from an app; returns whether it had it.
    pub fn remove_domain(&self, app: &str, name: &str) -> Result<bool> {
        self.app(app)?;
        Ok(self.conn.execute("DELETE FROM domains WHERE app = ?1 AND name = ?2", [app, name])? > 0)
    }

    /// The app's own host names, sorted.
    pub fn domains(&self, app: &str) -> Result<Vec<String>> {
        self.app(app)?;
        let mut stmt =
            self.conn.prepare("SELECT name FROM domains WHERE app = ?1 ORDER BY name")?;
        let rows = stmt.query_map([app], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The app that has the host name, if any.
    pub fn domain_owner(&self, name: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT app FROM domains WHERE name = ?1", [name], |row| row.get(0))
            .optional()?)
    }

    /// Gives a public port to an app; a port belongs to one app at most. Returns the app that
    /// has it when it is taken.
    pub fn add_port(&self, app: &str, port: u16) -> Result<Option<String>> {
        self.app(app)?;
        let owner: Option<String> = self
            .conn
            .query_row("SELECT app FROM ports WHERE port = ?1", [port], |row| row.get(0))
            .optional()?;
        if owner.is_none() {
            self.conn
                .execute("INSERT INTO ports (port, app) VALUES (?1, ?2)", params![port, app])?;
        }
        Ok(owner.filter(|owner| owner != app))
    }

    pub fn remove_port(&self, app: &str, port: u16) -> Result<bool> {
        Ok(self
            .conn
            .execute("DELETE FROM ports WHERE app = ?1 AND port = ?2", params![app, port])?
            > 0)
    }

    /// Every app port: (port, app).
    pub fn ports(&self) -> Result<Vec<(u16, String)>> {
        let mut stmt = self.conn.prepare("SELECT port, app FROM ports ORDER BY port")?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Sets the password hash of one of the app's basic-auth users, adding the user when
    /// new; returns whether the user is new.
    pub fn set_auth_user(
        &self,
        app: &str,
        user: &str,
        password_hash: &str,
        now: i64,
    ) -> Result<bool> {
        self.app(app)?;
        let existed = self
            .conn
            .query_row("SELECT 1 FROM basic_auth WHERE app = ?1 AND user = ?2", [app, user], |_| {
                Ok(())
            })
            .optional()?
            .is_some();
        self.conn.execute(
            "INSERT INTO basic_auth (app, user, password_hash, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (app, user) DO UPDATE SET password_hash = excluded.password_hash",
            params![app, user, password_hash, now],
        )?;
        Ok(!existed)
    }

    /// Removes one of the app's basic-auth users; returns whether the app had the user.
    pub fn remove_auth_user(&self, app: &str, user: &str) -> Result<bool> {
        self.app(app)?;
        Ok(self.conn.execute("DELETE FROM basic_auth WHERE app = ?1 AND user = ?2", [app, user])?
            > 0)
    }

    /// The basic-auth users of one app, or of every app with `None`, by app then user.
    pub fn auth_users(&self, app: Option<&str>) -> Result<Vec<AuthUserRecord>> {
        if let Some(app) = app {
            self.app(app)?;
        }
        let mut stmt = self.conn.prepare(
            "SELECT app, user, password_hash, created_at FROM basic_auth
             WHERE ?1 IS NULL OR app = ?1 ORDER BY app, user",
        )?;
        let rows = stmt.query_map([app], |row| {
            Ok(AuthUserRecord {
                app: row.get(0)?,
                user: row.get(1)?,
                password_hash: row.get(2)?,
                created_at: row.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Keeps an API token (only its hash). Fails when the name is taken.
    pub fn add_token(&self, name: &str, hash: &str, now: i64) -> Result<bool> {
        let n = self.conn.execute(
            "INSERT INTO tokens (name, hash, created_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            params![name, hash, now],
        )?;
        Ok(n > 0)
    }

    /// The name of the token with this hash, if any.
    pub fn token_name(&self, hash: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT name FROM tokens WHERE hash = ?1", [hash], |row| row.get(0))
            .optional()?)
    }

    /// Every token: (name, created_at).
    pub fn tokens(&self) -> Result<Vec<(String, i64)>> {
        let mut stmt = self.conn.prepare("SELECT name, created_at FROM tokens ORDER BY name")?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn remove_token(&self, name: &str) -> Result<bool> {
        Ok(self.conn.execute("DELETE FROM tokens WHERE name = ?1", [name])? > 0)
    }

    /// Where a pull-deployed app's code comes from (`POST /apps` with a repo).
    pub fn set_repo_source(&self, app: &str, url: &str, branch: &str) -> Result<()> {
        self.app(app)?;
        self.conn.execute(
            "UPDATE apps SET repo_url = ?2, repo_branch = ?3 WHERE name = ?1",
            params![app, url, branch],
        )?;
        Ok(())
    }

    pub fn repo_source(&self, app: &str) -> Result<Option<(String, String)>> {
        self.app(app)?;
        Ok(self.conn.query_row(
            "SELECT repo_url, repo_branch FROM apps WHERE name = ?1",
            [app],
            |row| Ok(row.get::<_, Option<String>>(0)?.zip(row.get::<_, Option<String>>(1)?)),
        )?)
    }

    /// Records a new release in the `building` state and returns its number (one more than the
    /// highest number the app ever had, so numbers are never reused).
    pub fn create_release(&self, app: &str, release: &NewRelease<'_>, now: i64) -> Result<i64> {
        self.app(app)?;
        let number: i64 = self.conn.query_row(
            "SELECT COALESCE(MAX(number), 0) + 1 FROM releases WHERE app = ?1",
            [app],
            |row| row.get(0),
        )?;
        self.conn.execute(
            "INSERT INTO releases
               (app, number, commit_sha, created_at, status, pushed_by, kind, build_of, config, build_env)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                app,
                number,
                release.commit,
                now,
                ReleaseStatus::Building.as_str(),
                release.pushed_by,
                release.kind,
                release.build_of,
                release.config,
                release.build_env
            ],
        )?;
        Ok(number)
    }

    pub fn set_release_config(&self, app: &str, number: i64, config: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE releases SET config = ?3 WHERE app = ?1 AND number = ?2",
            params![app, number, config],
        )?;
        Ok(())
    }

    pub fn mark_pruned(&self, app: &str, number: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE releases SET pruned = 1 WHERE app = ?1 AND number = ?2",
            params![app, number],
        )?;
        Ok(())
    }

    pub fn set_keep_releases(&self, app: &str, keep: i64) -> Result<()> {
        self.update_app("UPDATE apps SET keep_releases = ?2 WHERE name = ?1", app, keep)
    }

    pub fn set_lock(&self, app: &str, reason: Option<&str>) -> Result<()> {
        self.update_app("UPDATE apps SET lock_reason = ?2 WHERE name = ?1", app, reason)
    }

    /// Makes the app's config exactly `vars` (a rollback restores a release's config).
    pub fn replace_config(&mut self, app: &str, vars: &[(String, String)]) -> Result<()> {
        self.app(app)?;
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM config WHERE app = ?1", [app])?;
        for (key, value) in vars {
            tx.execute(
                "INSERT INTO config (app, key, value) VALUES (?1, ?2, ?3)",
                params![app, key, value],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn set_release_status(&self, app: &str, number: i64, status: ReleaseStatus) -> Result<()> {
        self.conn.execute(
            "UPDATE releases SET status = ?3 WHERE app = ?1 AND number = ?2",
            params![app, number, status.as_str()],
        )?;
        Ok(())
    }

    pub fn set_release_build_env(&self, app: &str, number: i64, build_env: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE releases SET build_env = ?3 WHERE app = ?1 AND number = ?2",
            params![app, number, build_env],
        )?;
        Ok(())
    }

    pub fn release(&self, app: &str, number: i64) -> Result<Option<ReleaseRecord>> {
        Ok(self
            .conn
            .query_row(
                "SELECT app, number, commit_sha, created_at, status, pushed_by, build_env, config,
                    COALESCE(build_of, number), kind, pruned FROM releases
                 WHERE app = ?1 AND number = ?2",
                params![app, number],
                release_from_row,
            )
            .optional()?)
    }

    /// The app's releases, newest first.
    pub fn releases(&self, app: &str) -> Result<Vec<ReleaseRecord>> {
        self.app(app)?;
        let mut stmt = self.conn.prepare(
            "SELECT app, number, commit_sha, created_at, status, pushed_by, build_env, config,
                    COALESCE(build_of, number), kind, pruned FROM releases
             WHERE app = ?1 ORDER BY number DESC",
        )?;
        let rows = stmt.query_map([app], release_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn app_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AppRecord> {
    Ok(AppRecord {
        name: row.get(0)?,
        created_at: row.get(1)?,
        state: AppState::parse(&row.get::<_, String>(2)?),
        current_release: row.get(3)?,
        keep_releases: row.get(4)?,
        lock_reason: row.get(5)?,
    })
}

fn release_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ReleaseRecord> {
    Ok(ReleaseRecord {
        app: row.get(0)?,
        number: row.get(1)?,
        commit: row.get(2)?,
        created_at: row.get(3)?,
        status: ReleaseStatus::parse(&row.get::<_, String>(4)?),
        pushed_by: row.get(5)?,
        build_env: row.get(6)?,
        config: row.get(7)?,
        build_of: row.get(8)?,
        kind: row.get(9)?,
        pruned: row.get::<_, i64>(10)? != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(commit: &str) -> NewRelease<'_> {
        NewRelease {
            commit,
            pushed_by: "SHA256:k",
            kind: "push",
            build_of: None,
            config: "{}",
            build_env: "",
        }
    }

    #[test]
    fn config_releases_reuse_a_build_and_keep_their_config() {
        let mut store = store_with_app();
        let one = store.create_release("web", &push("abc"), 1).unwrap();
        let config = NewRelease {
            kind: "config",
            build_of: Some(one),
            config: "{\"A\":\"1\"}",
            build_env: "{}",
            ..push("abc")
        };
        let two = store.create_release("web", &config, 2).unwrap();
        let release = store.release("web", two).unwrap().unwrap();
        assert_eq!(
            (release.build_of, release.kind.as_str(), release.config.as_str()),
            (one, "config", "{\"A\":\"1\"}")
        );
        assert_eq!(store.release("web", one).unwrap().unwrap().build_of, one);
        store.mark_pruned("web", one).unwrap();
        assert!(store.release("web", one).unwrap().unwrap().pruned);
        store.replace_config("web", &[("B".into(), "2".into())]).unwrap();
        assert_eq!(store.config("web").unwrap(), [("B".to_owned(), "2".to_owned())]);
        store.set_keep_releases("web", 3).unwrap();
        store.set_lock("web", Some("maintenance")).unwrap();
        let app = store.app("web").unwrap();
        assert_eq!((app.keep_releases, app.lock_reason.as_deref()), (3, Some("maintenance")));
    }

    fn store_with_app() -> Store {
        let store = Store::open_in_memory().unwrap();
        store.create_app("web", 1).unwrap();
        store
    }

    #[test]
    fn apps_are_created_listed_and_deleted() {
        let store = store_with_app();
        store.create_app("alpha", 2).unwrap();
        assert!(matches!(store.create_app("web", 3), Err(Error::AppExists(_))));
        let names: Vec<_> = store.apps().unwrap().into_iter().map(|a| a.name).collect();
        assert_eq!(names, ["alpha", "web"]);
        store.delete_app("alpha").unwrap();
        assert!(matches!(store.app("alpha"), Err(Error::NoSuchApp(_))));
        assert!(matches!(store.delete_app("alpha"), Err(Error::NoSuchApp(_))));
    }

    #[test]
    fn renaming_moves_every_row_and_rewrites_builds() {
        let mut store = store_with_app();
        store.create_app("taken", 1).unwrap();
        store.update_config("web", &[("K".into(), "v".into())], &[]).unwrap();
        let one = store.create_release("web", &push("abc"), 1).unwrap();
        store.set_release_build_env("web", one, "/r/cache/web/venv").unwrap();
        store.set_current_release("web", one).unwrap();
        store.add_domain("web", "www.example.com").unwrap();
        store.add_port("web", 8081).unwrap();
        store.set_scale("web", &[("web".into(), 2)]).unwrap();
        store.set_lock("web", None).unwrap();
        let rewrite = |env: &str| env.replace("/web/", "/shop/");

        let err = store.rename_app("web", "taken", &rewrite).unwrap_err();
        assert!(matches!(err, Error::AppExists(ref name) if name == "taken"), "{err}");
        assert!(matches!(store.rename_app("nope", "x", &rewrite), Err(Error::NoSuchApp(_))));
        assert_eq!(store.config("web").unwrap().len(), 1, "a refusal changes nothing");

        store.rename_app("web", "shop", &rewrite).unwrap();
        assert!(matches!(store.app("web"), Err(Error::NoSuchApp(_))));
        let app = store.app("shop").unwrap();
        assert_eq!((app.current_release, app.created_at), (Some(one), 1));
        assert_eq!(store.config("shop").unwrap(), [("K".to_owned(), "v".to_owned())]);
        assert_eq!(store.release("shop", one).unwrap().unwrap().build_env, "/r/cache/shop/venv");
        assert_eq!(store.domain_owner("www.example.com").unwrap().as_deref(), Some("shop"));
        assert_eq!(store.ports().unwrap(), [(8081, "shop".to_owned())]);
        assert_eq!(store.scale("shop").unwrap(), [("web".to_owned(), 2)]);
        // The foreign keys still hold: deleting the app takes its rows along.
        store.delete_app("shop").unwrap();
        assert!(store.ports().unwrap().is_empty());
        assert_eq!(store.domain_owner("www.example.com").unwrap(), None);
    }

    #[test]
    fn cloning_copies_config_and_scale_only() {
        let mut store = store_with_app();
        store.update_config("web", &[("K".into(), "v".into())], &[]).unwrap();
        store.set_scale("web", &[("worker".into(), 3)]).unwrap();
        store.set_keep_releases("web", 2).unwrap();
        store.set_repo_source("web", "https://example.com/web.git", "trunk").unwrap();
        store.add_domain("web", "www.example.com").unwrap();
        store.create_release("web", &push("abc"), 1).unwrap();

        store.clone_app("web", "copy", 7).unwrap();
        assert_eq!(store.repo_source("copy").unwrap(), store.repo_source("web").unwrap());
        let copy = store.app("copy").unwrap();
        assert_eq!((copy.created_at, copy.keep_releases, copy.current_release), (7, 2, None));
        assert_eq!(store.config("copy").unwrap(), store.config("web").unwrap());
        assert_eq!(store.scale("copy").unwrap(), [("worker".to_owned(), 3)]);
        assert!(store.domains("copy").unwrap().is_empty());
        assert!(store.releases("copy").unwrap().is_empty());
        assert!(matches!(store.clone_app("web", "copy", 8), Err(Error::AppExists(_))));
        assert!(matches!(store.clone_app("nope", "other", 8), Err(Error::NoSuchApp(_))));
    }

    #[test]
    fn state_and_current_release_persist() {
        let store = store_with_app();
        assert_eq!(store.app("web").unwrap().state, AppState::Running);
        store.set_app_state("web", AppState::Stopped).unwrap();
        store.set_current_release("web", 4).unwrap();
        let app = store.app("web").unwrap();
        assert_eq!((app.state, app.current_release), (AppState::Stopped, Some(4)));
        assert!(store.set_app_state("nope", AppState::Stopped).is_err());
    }

    #[test]
    fn config_sets_overwrites_and_unsets() {
        let mut store = store_with_app();
        let set = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        store.update_config("web", &set(&[("B", "2"), ("A", "1 = one")]), &[]).unwrap();
        store.update_config("web", &set(&[("B", "3")]), &["A".into(), "MISSING".into()]).unwrap();
        assert_eq!(store.config("web").unwrap(), set(&[("B", "3")]));
        assert!(matches!(store.update_config("x", &[], &[]), Err(Error::NoSuchApp(_))));
    }

    #[test]
    fn release_numbers_grow_and_are_not_reused_after_failure() {
        let store = store_with_app();
        let one = store.create_release("web", &push("abc"), 10).unwrap();
        store.set_release_status("web", one, ReleaseStatus::Failed).unwrap();
        let two = store.create_release("web", &push("def"), 11).unwrap();
        assert_eq!((one, two), (1, 2));
        let releases = store.releases("web").unwrap();
        assert_eq!(releases[0].number, 2);
        assert_eq!(releases[1].status, ReleaseStatus::Failed);
        assert_eq!(store.release("web", 2).unwrap().unwrap().commit, "def");
        store.set_release_build_env("web", 2, "{\"a\":1}").unwrap();
        assert_eq!(store.release("web", 2).unwrap().unwrap().build_env, "{\"a\":1}");
        assert_eq!(store.release("web", 9).unwrap(), None);
    }

    #[test]
    fn a_domain_belongs_to_one_app() {
        let store = store_with_app();
        store.create_app("other", 1).unwrap();
        store.add_domain("web", "www.example.com").unwrap();
        store.add_domain("web", "www.example.com").unwrap();
        let err = store.add_domain("other", "www.example.com").unwrap_err();
        assert_eq!(err.to_string(), "www.example.com is already a domain of web");
        assert_eq!(store.domains("web").unwrap(), ["www.example.com"]);
        assert_eq!(store.domain_owner("www.example.com").unwrap().as_deref(), Some("web"));
        assert!(store.remove_domain("web", "www.example.com").unwrap());
        assert!(!store.remove_domain("web", "www.example.com").unwrap());
        store.add_domain("other", "www.example.com").unwrap();
    }

    #[test]
    fn basic_auth_users_are_set_changed_listed_and_removed() {
        let store = store_with_app();
        store.create_app("other", 1).unwrap();
        assert!(store.set_auth_user("web", "bob", "$h1", 10).unwrap());
        assert!(store.set_auth_user("web", "alice", "$h2", 11).unwrap());
        assert!(store.set_auth_user("other", "alice", "$h3", 12).unwrap());
        // A new password for a user keeps the user's creation time.
        assert!(!store.set_auth_user("web", "bob", "$h4", 13).unwrap());
        let users: Vec<(String, String, String, i64)> = store
            .auth_users(None)
            .unwrap()
            .into_iter()
            .map(|u| (u.app, u.user, u.password_hash, u.created_at))
            .collect();
        let row = |app: &str, user: &str, hash: &str, at| {
            (app.to_owned(), user.to_owned(), hash.to_owned(), at)
        };
        assert_eq!(
            users,
            [
                row("other", "alice", "$h3", 12),
                row("web", "alice", "$h2", 11),
                row("web", "bob", "$h4", 10)
            ]
        );
        let web: Vec<String> =
            store.auth_users(Some("web")).unwrap().into_iter().map(|u| u.user).collect();
        assert_eq!(web, ["alice", "bob"]);
        assert!(store.remove_auth_user("web", "bob").unwrap());
        assert!(!store.remove_auth_user("web", "bob").unwrap());
        assert_eq!(store.auth_users(Some("web")).unwrap().len(), 1);
        assert!(matches!(store.auth_users(Some("nope")), Err(Error::NoSuchApp(_))));
        assert!(matches!(store.set_auth_user("nope", "a", "$h", 1), Err(Error::NoSuchApp(_))));
        // Users go with their app.
        store.delete_app("other").unwrap();
        store.create_app("other", 2).unwrap();
        assert!(store.auth_users(Some("other")).unwrap().is_empty());
    }

    #[test]
    fn scale_is_kept_per_process_type() {
        let mut store = store_with_app();
        assert!(store.scale("web").unwrap().is_empty());
        store.set_scale("web", &[("web".into(), 3), ("worker".into(), 0)]).unwrap();
        store.set_scale("web", &[("web".into(), 2)]).unwrap();
        assert_eq!(store.scale("web").unwrap(), [("web".to_owned(), 2), ("worker".to_owned(), 0)]);
        assert!(matches!(store.set_scale("nope", &[]), Err(Error::NoSuchApp(_))));
    }

    #[test]
    fn deleting_an_app_removes_its_config_and_releases() {
        let mut store = store_with_app();
        store.update_config("web", &[("K".into(), "v".into())], &[]).unwrap();
        store.create_release("web", &push("abc"), 1).unwrap();
        store.set_scale("web", &[("web".into(), 3)]).unwrap();
        store.delete_app("web").unwrap();
        store.create_app("web", 2).unwrap();
        assert!(store.scale("web").unwrap().is_empty());
        assert!(store.config("web").unwrap().is_empty());
        assert!(store.releases("web").unwrap().is_empty());
    }

    #[test]
    fn an_old_database_gains_the_new_columns() {
        let dir = std::env::temp_dir().join(format!("berth-store-migrate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("berth.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE apps (name TEXT PRIMARY KEY, created_at INTEGER NOT NULL,
                   state TEXT NOT NULL DEFAULT 'running', current_release INTEGER);
                 CREATE TABLE releases (app TEXT NOT NULL, number INTEGER NOT NULL,
                   commit_sha TEXT NOT NULL, created_at INTEGER NOT NULL, status TEXT NOT NULL,
                   pushed_by TEXT NOT NULL DEFAULT '', PRIMARY KEY (app, number));
                 INSERT INTO apps (name, created_at) VALUES ('old', 1);
                 INSERT INTO releases VALUES ('old', 1, 'abc', 1, 'succeeded', 'k');",
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let release = store.release("old", 1).unwrap().unwrap();
        assert_eq!((release.commit.as_str(), release.build_env.as_str()), ("abc", ""));
        // Tables added since are made too.
        assert!(store.set_auth_user("old", "alice", "$h", 2).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reopening_a_file_store_keeps_data() {
        let dir = std::env::temp_dir().join(format!("berth-store-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("berth.db");
        {
            let store = Store::open(&path).unwrap();
            store.create_app("kept", 5).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.app("kept").unwrap().created_at, 5);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the database holds secrets");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
