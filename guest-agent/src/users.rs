//! `--user` resolution through the image's /etc/passwd and /etc/group,
//! with Docker's rules: a name must exist; a numeric uid need not (its
//! group is then 0); `user:group` takes the group by name or number;
//! supplementary groups are those that list the user.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn group_entries(group: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    group.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        Some(GroupEntry {
            name: f[0],
            gid: f[2].parse().ok()?,
            members: f[3].split(',').filter(|m| !m.is_empty()).collect(),
        })
    })
}

/// Resolves `spec` (`""`, `name`, `uid`, `name:group`, `uid:gid`, ...).
/// `passwd` and `group` are the files' contents (empty when missing).
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<User, String> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let entry = match user_part.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|e| e.uid == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|e| e.name == user_part)
                .ok_or_else(|| {
                    format!("unable to find user {user_part}: no matching entries in passwd file")
                })?,
        ),
    };
    let uid = match &entry {
        Some(e) => e.uid,
        None => user_part
            .parse()
            .map_err(|_| format!("bad user {user_part:?}"))?,
    };
    let mut gid = entry.as_ref().map_or(0, |e| e.gid);
    let home = entry
        .as_ref()
        .map_or("/", |e| if e.home.is_empty() { "/" } else { e.home })
        .to_string();
    if let Some(g) = group_part.filter(|g| !g.is_empty()) {
        gid = group_id(g, group)?;
    }
    let mut groups = vec![gid];
    // An explicit group replaces the supplementary ones, as Docker does.
    if group_part.is_none() {
        if let Some(e) = &entry {
            for g in group_entries(group) {
                if g.members.contains(&e.name) && !groups.contains(&g.gid) {
                    groups.push(g.gid);
                }
            }
        }
    }
    Ok(User {
        uid,
        gid,
        groups,
        home,
    })
}

/// A group given by number, or by name in `group` (an /etc/group).
fn group_id(g: &str, group: &str) -> Result<u32, String> {
    match g.parse::<u32>() {
        Ok(n) => Ok(n),
        Err(_) => group_entries(group)
            .find(|e| e.name == g)
            .map(|e| e.gid)
            .ok_or_else(|| format!("unable to find group {g}: no matching entries in group file")),
    }
}

/// `--group-add`: each a group name in `group` or a number; added to
/// `user`'s supplementary groups.
pub fn add_groups(user: &mut User, extra: &[String], group: &str) -> Result<(), String> {
    for g in extra {
        let gid = group_id(g, group)?;
        if !user.groups.contains(&gid) {
            user.groups.push(gid);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nbob:x:1000:1000::/home/bob:/bin/sh\nbroken line\nnohome:x:1001:100:::/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:bob,alice\nbob:x:1000:\nstaff:x:50:bob\n";

    #[test]
    fn default_is_root() {
        let u = resolve("", PASSWD, GROUP).expect("root");
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
    }

    #[test]
    fn names_resolve_with_supplementary_groups() {
        let u = resolve("bob", PASSWD, GROUP).expect("bob");
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 1000, "/home/bob"));
        assert_eq!(u.groups, vec![1000, 10, 50]);
    }

    #[test]
    fn unknown_uid_gets_group_zero_and_unknown_name_fails() {
        let u = resolve("4242", PASSWD, GROUP).expect("uid");
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 0, "/"));
        let err = resolve("nobody2", PASSWD, GROUP).expect_err("unknown user");
        assert!(err.contains("unable to find user nobody2"), "{err}");
    }

    #[test]
    fn explicit_groups() {
        let u = resolve("bob:staff", PASSWD, GROUP).expect("bob:staff");
        assert_eq!((u.uid, u.gid), (1000, 50));
        assert_eq!(u.groups, vec![50]);
        let u = resolve("1000:7", PASSWD, GROUP).expect("1000:7");
        assert_eq!((u.uid, u.gid), (1000, 7));
        assert!(resolve("bob:nogroup", PASSWD, GROUP).is_err());
        let u = resolve("nohome", PASSWD, "").expect("nohome");
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1001, 100, "/"));
    }

    #[test]
    fn added_groups() {
        let mut u = resolve("bob", PASSWD, GROUP).expect("bob");
        add_groups(
            &mut u,
            &["staff".into(), "4000".into(), "root".into()],
            GROUP,
        )
        .expect("add");
        assert_eq!(u.groups, vec![1000, 10, 50, 4000, 0]);
        assert!(add_groups(&mut u, &["nosuch".into()], GROUP).is_err());
    }
}
