//! Basic-auth users per app (`auth:set`, `auth`, `auth:unset`): kept in the store as salted
//! slow hashes, handed to the router as one [`BasicAuth`] per app, which a change replaces
//! in the route table at once, without restarting the app.

use std::collections::HashMap;
use std::sync::Arc;

use berth_router::BasicAuth;

use crate::error::ApiError;
use crate::state::{Daemon, now};

/// Longer user names are surely a mistake, and they end up in headers and logs.
const MAX_USER_LEN: usize = 64;

/// A password longer than this is refused rather than hashed: PBKDF2 hashes it whole.
pub(crate) const MAX_PASSWORD_LEN: usize = 1024;

/// Checks a user name: letters, digits and `.`, `_`, `-`, `@`, `+`, at most 64 of them. A
/// colon could not be sent in a `Basic` header at all.
pub(crate) fn check_user_name(user: &str) -> Result<(), ApiError> {
    let is_valid = !user.is_empty()
        && user.len() <= MAX_USER_LEN
        && user.chars().all(|c| c.is_ascii_alphanumeric() || "._-@+".contains(c));
    if is_valid {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid user name {user:?}: letters, digits, '.', '_', '-', '@' and '+', at most \
             {MAX_USER_LEN} (for example alice)"
        )))
    }
}

/// Checks a password as it arrived: not empty, not too long.
pub(crate) fn check_password(password: &str) -> Result<(), ApiError> {
    if password.is_empty() {
        return Err(ApiError::bad_request(
            "the password is empty; send it on standard input (for example \
             `echo \"$PASSWORD\" | ssh berth@server auth:set APP USER`)",
        ));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(ApiError::bad_request(format!(
            "the password is longer than {MAX_PASSWORD_LEN} bytes; choose a shorter one"
        )));
    }
    Ok(())
}

impl Daemon {
    /// Reads every app's users from the store (at start, before any route is published), so
    /// that no protected app is ever served open.
    pub fn load_basic_auth(&self) -> Result<(), ApiError> {
        let mut by_app: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for record in self.store().auth_users(None)? {
            by_app.entry(record.app).or_default().push((record.user, record.password_hash));
        }
        let mut map = self.basic_auth_map();
        map.clear();
        for (app, users) in by_app {
            let auth = Arc::new(BasicAuth::new(app.clone(), users));
            map.insert(app, auth);
        }
        Ok(())
    }

    /// The app's users as the router checks them, if it has any.
    pub(crate) fn basic_auth_of(&self, app: &str) -> Option<Arc<BasicAuth>> {
        self.basic_auth_map().get(app).cloned()
    }

    /// Forgets the app's users (destroy, once the store has).
    pub(crate) fn forget_basic_auth(&self, app: &str) {
        self.basic_auth_map().remove(app);
    }

    fn basic_auth_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<BasicAuth>>> {
        self.basic_auth.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads the app's users from the store and routes the app with them, at once.
    fn refresh_basic_auth(&self, app: &str) -> Result<(), ApiError> {
        let users: Vec<(String, String)> = self
            .store()
            .auth_users(Some(app))?
            .into_iter()
            .map(|record| (record.user, record.password_hash))
            .collect();
        {
            let mut map = self.basic_auth_map();
            if users.is_empty() {
                map.remove(app);
            } else {
                map.insert(app.to_owned(), Arc::new(BasicAuth::new(app, users)));
            }
        }
        let runtimes = self.runtimes();
        self.publish_routes(&runtimes);
        Ok(())
    }

    /// Sets a user's password (adding the user when new); returns whether the user is new.
    /// The password is hashed off the async threads: the hash is slow on purpose.
    pub async fn set_auth_user(
        &self,
        app: &str,
        user: &str,
        password: String,
    ) -> Result<bool, ApiError> {
        check_user_name(user)?;
        check_password(&password)?;
        self.store().app(app)?;
        let hash = tokio::task::spawn_blocking(move || berth_router::hash_password(&password))
            .await
            .map_err(|e| ApiError::internal(format!("the password hash failed: {e}")))?
            .map_err(|e| ApiError::internal(format!("cannot hash the password: {e}")))?;
        let added = self.store().set_auth_user(app, user, &hash, now())?;
        self.refresh_basic_auth(app)?;
        Ok(added)
    }

    /// Removes a user; an app without users is open again.
    pub fn remove_auth_user(&self, app: &str, user: &str) -> Result<(), ApiError> {
        if !self.store().remove_auth_user(app, user)? {
            return Err(ApiError::not_found(format!(
                "{app} has no user {user:?} (`auth {app}` lists them)"
            )));
        }
        self.refresh_basic_auth(app)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_table() {
        for good in ["alice", "bob.smith", "ci-bot_2", "me@example.com", "a+b", &"a".repeat(64)] {
            assert!(check_user_name(good).is_ok(), "{good:?}");
        }
        for bad in ["", "a:b", "two words", "tab\t", "ünï", "a/b", &"a".repeat(65)] {
            let error = check_user_name(bad).unwrap_err();
            assert_eq!(error.status, axum::http::StatusCode::BAD_REQUEST);
            assert!(error.message.contains("(for example alice)"), "{bad:?}: {}", error.message);
        }
    }

    #[test]
    fn passwords_must_be_given_and_not_huge() {
        assert!(check_password("x").is_ok());
        assert!(check_password(&"x".repeat(MAX_PASSWORD_LEN)).is_ok());
        let empty = check_password("").unwrap_err().message;
        assert!(empty.contains("the password is empty"), "{empty}");
        assert!(check_password(&"x".repeat(MAX_PASSWORD_LEN + 1)).is_err());
    }
}
