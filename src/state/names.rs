//! Name reservations: a pod's or container's name key maps to at most one id, so two creates of
//! the same name cannot both succeed.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Names {
    map: Mutex<HashMap<String, String>>,
}

impl Names {
    /// Reserve `key` for `id`; `Err(holder)` with the id that already holds it.
    pub fn reserve(&self, key: &str, id: &str) -> Result<(), String> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match m.get(key) {
            Some(holder) if holder != id => Err(holder.clone()),
            _ => {
                m.insert(key.to_string(), id.to_string());
                Ok(())
            }
        }
    }

    /// Release `key` if `id` holds it.
    pub fn release(&self, key: &str, id: &str) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if m.get(key).is_some_and(|h| h == id) {
            m.remove(key);
        }
    }

    /// The id holding `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_per_name() {
        let n = Names::default();
        n.reserve("a", "1").unwrap();
        n.reserve("a", "1").unwrap();
        assert_eq!(n.reserve("a", "2"), Err("1".to_string()));
        n.release("a", "2");
        assert_eq!(n.get("a").as_deref(), Some("1"));
        n.release("a", "1");
        n.reserve("a", "2").unwrap();
    }
}
