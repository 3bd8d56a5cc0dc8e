//! The process identity: run_as_username / run_as_user / the image's `USER`, groups and
//! supplemental groups, resolved against the image's /etc/passwd and /etc/group.

use std::path::Path;

use super::{HostFiles, SpecError};

/// What the request asks for (CRI's security context, converted).
#[derive(Debug, Clone, Default)]
pub struct UserRequest {
    pub run_as_username: String,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub supplemental_groups: Vec<i64>,
    /// Merge the groups /etc/group lists the user in (CRI's `Merge` policy) or not (`Strict`).
    pub merge_image_groups: bool,
}

/// The process identity resolved against the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// From /etc/passwd, for `HOME`.
    pub home: Option<String>,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f.get(5).copied().unwrap_or("").to_string(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

enum Who {
    Name(String),
    Id(u32),
}

fn parse_who(s: &str) -> Who {
    match s.parse::<u32>() {
        Ok(id) => Who::Id(id),
        Err(_) => Who::Name(s.to_string()),
    }
}

fn id_from_i64(field: &str, v: i64) -> Result<u32, SpecError> {
    u32::try_from(v).map_err(|_| SpecError::invalid(field, format!("{v} is not a valid id")))
}

/// The user the container runs as: run_as_username, run_as_user, else the image's `USER`;
/// the group from run_as_group, the image's `user:group`, else the user's primary group.
pub fn resolve_user(
    req: Option<&UserRequest>,
    image_user: &str,
    rootfs: &Path,
    files: &dyn HostFiles,
) -> Result<ResolvedUser, SpecError> {
    let (user, mut group): (Option<Who>, Option<Who>) = match req {
        Some(s) if !s.run_as_username.is_empty() => {
            (Some(Who::Name(s.run_as_username.clone())), None)
        }
        Some(UserRequest {
            run_as_user: Some(uid),
            ..
        }) => (Some(Who::Id(id_from_i64("run_as_user", *uid)?)), None),
        _ => {
            if req.and_then(|s| s.run_as_group).is_some() {
                return Err(SpecError::invalid(
                    "run_as_group",
                    "run_as_group requires run_as_user or run_as_username",
                ));
            }
            let (u, g) = match image_user.split_once(':') {
                Some((u, g)) => (u, Some(g)),
                None => (image_user, None),
            };
            (
                (!u.is_empty()).then(|| parse_who(u)),
                g.filter(|g| !g.is_empty()).map(parse_who),
            )
        }
    };
    if let Some(g) = req.and_then(|s| s.run_as_group) {
        group = Some(Who::Id(id_from_i64("run_as_group", g)?));
    }

    let passwd = parse_passwd(&files.read_in_root(rootfs, "/etc/passwd")?);
    let groups = parse_group(&files.read_in_root(rootfs, "/etc/group")?);

    let entry = match &user {
        None => passwd.iter().find(|p| p.uid == 0),
        Some(Who::Id(id)) => passwd.iter().find(|p| p.uid == *id),
        Some(Who::Name(name)) => {
            Some(passwd.iter().find(|p| &p.name == name).ok_or_else(|| {
                SpecError::invalid(
                    "user",
                    format!("user {name:?} not found in the image's /etc/passwd"),
                )
            })?)
        }
    };
    let uid = match (&user, entry) {
        (Some(Who::Id(id)), _) => *id,
        (_, Some(e)) => e.uid,
        (None, None) => 0,
        (Some(Who::Name(_)), None) => 0, // unreachable: names must resolve
    };
    let gid = match &group {
        Some(Who::Id(id)) => *id,
        Some(Who::Name(name)) => groups
            .iter()
            .find(|g| &g.name == name)
            .map(|g| g.gid)
            .ok_or_else(|| {
                SpecError::invalid(
                    "group",
                    format!("group {name:?} not found in the image's /etc/group"),
                )
            })?,
        None => entry.map(|e| e.gid).unwrap_or(0),
    };

    let mut additional: Vec<u32> = Vec::new();
    if req.is_none_or(|r| r.merge_image_groups) {
        if let Some(e) = entry {
            for g in groups
                .iter()
                .filter(|g| g.members.iter().any(|m| m == &e.name))
            {
                additional.push(g.gid);
            }
        }
    }
    for g in req.map(|s| s.supplemental_groups.as_slice()).unwrap_or(&[]) {
        additional.push(id_from_i64("supplemental_groups", *g)?);
    }
    let mut seen = std::collections::HashSet::new();
    additional.retain(|g| seen.insert(*g));

    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: additional,
        home: entry.map(|e| e.home.clone()).filter(|h| !h.is_empty()),
    })
}
