//! Built-in IPAM with host-local's on-disk layout and allocation order.
//!
//! `<dataDir>/<network>/<ip>` holds `<containerID>\r\n<ifname>`, `last_reserved_ip.0` the last
//! address handed out, and every read-modify-write happens under `flock` on `<dir>/lock`, so
//! weft and the reference host-local can share a directory. An address file is created
//! exclusively and filled with one small write, so a plugin killed at any point leaves no file, an
//! empty one (taken over by the next ADD that meets it, removed by any scan) or a complete one; an
//! allocation whose ADD was killed before wiring the pod is released by that container's DEL or
//! by GC.

use std::fs::{self, File};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};
use crate::ip::{Ipv4Net, Ipv6Net};

/// host-local's record of the last reserved address for range set 0.
pub const LAST_RESERVED_FILE: &str = "last_reserved_ip.0";

/// host-local's record for range set 1: the IPv6 range of a dual-stack node (host-local
/// numbers range sets in config order, IPv4 first as flannel's CNI plugin lists them).
pub const LAST_RESERVED_FILE_6: &str = "last_reserved_ip.1";
/// host-local's lock file.
pub const LOCK_FILE: &str = "lock";

/// The allocatable addresses of a node subnet: network+1 .. broadcast-1, minus the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    start: u32,
    end: u32,
}

impl Pool {
    /// The pool of `subnet` (as in FLANNEL_SUBNET: the address given is the gateway).
    pub fn new(subnet: Ipv4Net) -> Pool {
        Pool {
            subnet: subnet.trunc(),
            gateway: subnet.addr(),
            start: u32::from(subnet.network()).saturating_add(1),
            end: u32::from(subnet.broadcast()).saturating_sub(1),
        }
    }

    /// The subnet with host bits cleared.
    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// How many addresses can be allocated.
    pub fn capacity(&self) -> u32 {
        let range = (self.end + 1).saturating_sub(self.start);
        if self.holds(self.gateway) {
            range - 1
        } else {
            range
        }
    }

    /// Why `ip` cannot be requested as a static address of this pool, if it cannot.
    pub fn static_refusal(&self, ip: Ipv4Addr) -> Option<String> {
        if ip == self.gateway {
            Some(format!("{ip} is the gateway of {}", self.subnet))
        } else if !self.holds(ip) {
            Some(format!(
                "requested static ip {ip} is not an assignable address of the node subnet {}",
                self.subnet
            ))
        } else {
            None
        }
    }

    fn holds(&self, ip: Ipv4Addr) -> bool {
        (self.start..=self.end).contains(&u32::from(ip))
    }

    /// host-local's round-robin order: the addresses after `last` (if it lies in the pool),
    /// wrapping around, ending with `last` itself; otherwise from the start. Gateway skipped.
    pub fn candidates(&self, last: Option<Ipv4Addr>) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let first = match last {
            Some(ip) if self.holds(ip) => {
                let ip = u32::from(ip);
                if ip == self.end {
                    self.start
                } else {
                    ip + 1
                }
            }
            _ => self.start,
        };
        let size = (self.end + 1).saturating_sub(self.start);
        (0..size)
            .map(move |step| {
                // In u64: a pool of most of the address space (a /0 or /1 node subnet)
                // would overflow u32 here.
                let offset = (u64::from(first - self.start) + u64::from(step)) % u64::from(size);
                Ipv4Addr::from(self.start + offset as u32)
            })
            .filter(move |ip| *ip != self.gateway)
    }
}

/// The allocatable IPv6 addresses of a node subnet, host-local's range: network+1 .. the
/// last address, minus the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool6 {
    subnet: Ipv6Net,
    gateway: Ipv6Addr,
    start: u128,
    end: u128,
}

impl Pool6 {
    /// The pool of `subnet` (as in FLANNEL_IPV6_SUBNET: the address given is the gateway).
    pub fn new(subnet: Ipv6Net) -> Pool6 {
        Pool6 {
            subnet: subnet.trunc(),
            gateway: subnet.addr(),
            start: u128::from(subnet.network()).saturating_add(1),
            end: u128::from(subnet.last()),
        }
    }

    /// The subnet with host bits cleared.
    pub fn subnet(&self) -> Ipv6Net {
        self.subnet
    }

    fn holds(&self, ip: Ipv6Addr) -> bool {
        (self.start..=self.end).contains(&u128::from(ip))
    }

    /// host-local's round-robin order, as [`Pool::candidates`].
    pub fn candidates(&self, last: Option<Ipv6Addr>) -> impl Iterator<Item = Ipv6Addr> + '_ {
        let first = match last {
            Some(ip) if self.holds(ip) && u128::from(ip) < self.end => u128::from(ip) + 1,
            _ => self.start,
        };
        // From `first` to the end, then from the start up to `first` (a /64 is never walked
        // whole: the first free address ends the walk).
        (first..=self.end)
            .chain(self.start..first)
            .map(Ipv6Addr::from)
            .filter(move |ip| *ip != self.gateway)
    }
}

/// One address file: who holds the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The allocated address (IPv4, or IPv6 on a dual-stack node).
    pub ip: IpAddr,
    /// The owning container ID.
    pub container_id: String,
    /// The owning interface; `None` for host-local's old one-line format.
    pub ifname: Option<String>,
}

impl Allocation {
    /// Whether this allocation belongs to `(container_id, ifname)` (old format: container only).
    pub fn owned_by(&self, container_id: &str, ifname: &str) -> bool {
        self.container_id == container_id && self.ifname.as_deref().is_none_or(|i| i == ifname)
    }
}

/// The content of an address file, exactly as host-local writes it.
pub fn format_owner(container_id: &str, ifname: &str) -> String {
    format!("{container_id}\r\n{ifname}")
}

/// Parses an address file's content; `None` for an empty (half-written) file.
pub fn parse_owner(content: &str) -> Option<(String, Option<String>)> {
    let content = content.trim();
    if content.is_empty() {
        return None;
    }
    match content.split_once('\n') {
        Some((id, ifname)) => Some((
            id.trim_end_matches('\r').to_string(),
            Some(ifname.trim().to_string()),
        )),
        None => Some((content.to_string(), None)),
    }
}

/// The IPAM directory of one network.
#[derive(Debug, Clone)]
pub struct IpamStore {
    dir: PathBuf,
}

impl IpamStore {
    /// The store at `<data_dir>/<network>`.
    pub fn new(data_dir: &Path, network: &str) -> IpamStore {
        IpamStore {
            dir: data_dir.join(network),
        }
    }

    /// The directory holding the address files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the directory if needed and takes the exclusive lock.
    pub fn lock(&self) -> Result<LockedStore<'_>> {
        // host-local's modes (directories 0755, files 0600), whatever the runtime's umask: an
        // allocation anyone could write or remove would let them take or free pods' addresses.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&self.dir)
            .map_err(|source| Error::Io {
                op: "create IPAM directory",
                path: self.dir.clone(),
                source,
            })?;
        let lock_path = self.dir.join(LOCK_FILE);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|source| Error::Io {
                op: "open IPAM lock",
                path: lock_path.clone(),
                source,
            })?;
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| Error::Io {
            op: "flock IPAM lock",
            path: lock_path,
            source: io::Error::from(errno),
        })?;
        Ok(LockedStore {
            dir: &self.dir,
            _lock: lock,
        })
    }
}

/// The store while its lock is held; dropping it releases the lock.
#[derive(Debug)]
pub struct LockedStore<'a> {
    dir: &'a Path,
    _lock: Flock<File>,
}

impl LockedStore<'_> {
    fn io(&self, op: &'static str, path: PathBuf) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { op, path, source }
    }

    /// Every address file, after removing crash leftovers (empty files).
    pub fn allocations(&self) -> Result<Vec<Allocation>> {
        let entries =
            fs::read_dir(self.dir).map_err(self.io("list IPAM directory", self.dir.into()))?;
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(self.io("list IPAM directory", self.dir.into()))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let path = entry.path();
            let Ok(ip) = name.parse::<IpAddr>() else {
                continue;
            };
            let content = match fs::read_to_string(&path) {
                Ok(content) => content,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(Error::Io {
                        op: "read address file",
                        path,
                        source,
                    })
                }
            };
            match parse_owner(&content) {
                Some((container_id, ifname)) => found.push(Allocation {
                    ip,
                    container_id,
                    ifname,
                }),
                None => remove_if_present(&path)?,
            }
        }
        found.sort_by_key(|a| a.ip);
        Ok(found)
    }

    /// The address recorded in `last_reserved_ip.0`, if readable.
    pub fn last_reserved(&self) -> Option<Ipv4Addr> {
        fs::read_to_string(self.dir.join(LAST_RESERVED_FILE))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Allocates an address of `pool` to `(container_id, ifname)`, host-local's way: the first
    /// candidate whose file can be created exclusively. Reads no other allocation, so its cost
    /// does not grow with the number of pods. The file gets its content in one small write, so a
    /// killed plugin leaves no file, an empty one or a complete one; an empty file met here is
    /// taken over (under the lock, it can only be a killed writer's).
    pub fn allocate(&self, pool: &Pool, container_id: &str, ifname: &str) -> Result<Ipv4Addr> {
        let claimed = self.claim_first(
            pool.candidates(self.last_reserved()).map(IpAddr::V4),
            LAST_RESERVED_FILE,
            container_id,
            ifname,
        )?;
        match claimed {
            Some(IpAddr::V4(ip)) => Ok(ip),
            _ => Err(self.exhausted(pool.subnet().to_string(), pool.capacity())),
        }
    }

    /// Allocates an IPv6 address of `pool` (range set 1, `last_reserved_ip.1`), as
    /// [`LockedStore::allocate`] does for IPv4.
    pub fn allocate6(&self, pool: &Pool6, container_id: &str, ifname: &str) -> Result<Ipv6Addr> {
        let last = fs::read_to_string(self.dir.join(LAST_RESERVED_FILE_6))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let claimed = self.claim_first(
            pool.candidates(last).map(IpAddr::V6),
            LAST_RESERVED_FILE_6,
            container_id,
            ifname,
        )?;
        match claimed {
            Some(IpAddr::V6(ip)) => Ok(ip),
            _ => Err(self.exhausted(pool.subnet().to_string(), u32::MAX)),
        }
    }

    fn exhausted(&self, subnet: String, capacity: u32) -> Error {
        Error::AddressPoolExhausted {
            subnet,
            network: self
                .dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            capacity,
            dir: self.dir.to_path_buf(),
        }
    }

    /// The first of `candidates` whose file can be created exclusively, recorded in
    /// `last_file`; `None` when every one is taken.
    fn claim_first(
        &self,
        candidates: impl Iterator<Item = IpAddr>,
        last_file: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<IpAddr>> {
        let content = format_owner(container_id, ifname);
        let create = |path: &Path| {
            File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
        };
        for candidate in candidates {
            let path = self.dir.join(candidate.to_string());
            let mut created = create(&path);
            if matches!(&created, Err(e) if e.kind() == io::ErrorKind::AlreadyExists)
                && is_empty_file(&path)
            {
                remove_if_present(&path)?;
                created = create(&path);
            }
            match created {
                Ok(mut file) => {
                    if let Err(source) = file.write_all(content.as_bytes()) {
                        remove_if_present(&path)?;
                        return Err(Error::Io {
                            op: "write address file",
                            path,
                            source,
                        });
                    }
                    self.write_last_reserved_to(last_file, &candidate.to_string())?;
                    return Ok(Some(candidate));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => {
                    return Err(Error::Io {
                        op: "create address file",
                        path,
                        source,
                    })
                }
            }
        }
        Ok(None)
    }

    /// Allocates the requested `ip` (already checked against the pool) to `(container_id,
    /// ifname)`. An allocation the same attachment already holds is kept (a runtime re-adding a
    /// container with its old address); one held by anyone else is refused. Returns whether
    /// this call made the allocation, so that a failed ADD undoes only what it made and never
    /// the address of an attachment already in place.
    pub fn allocate_static(&self, ip: Ipv4Addr, container_id: &str, ifname: &str) -> Result<bool> {
        let path = self.dir.join(ip.to_string());
        let create = || {
            File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
        };
        let mut created = create();
        if matches!(&created, Err(e) if e.kind() == io::ErrorKind::AlreadyExists) {
            if is_empty_file(&path) {
                remove_if_present(&path)?;
                created = create();
            } else {
                let owner = fs::read_to_string(&path)
                    .ok()
                    .and_then(|content| parse_owner(&content));
                return match owner {
                    Some((id, owner_ifname))
                        if (Allocation {
                            ip: ip.into(),
                            container_id: id.clone(),
                            ifname: owner_ifname.clone(),
                        })
                        .owned_by(container_id, ifname) =>
                    {
                        Ok(false)
                    }
                    Some((id, owner_ifname)) => Err(Error::AddressTaken {
                        ip,
                        owner: format!(
                            "container {id} interface {}",
                            owner_ifname.as_deref().unwrap_or("?")
                        ),
                        file: path,
                    }),
                    None => Err(Error::AddressTaken {
                        ip,
                        owner: "an unreadable allocation".into(),
                        file: path,
                    }),
                };
            }
        }
        let mut file = created.map_err(self.io("create address file", path.clone()))?;
        if let Err(source) = file.write_all(format_owner(container_id, ifname).as_bytes()) {
            remove_if_present(&path)?;
            return Err(Error::Io {
                op: "write address file",
                path,
                source,
            });
        }
        self.write_last_reserved(ip)?;
        Ok(true)
    }

    /// Records `ip` in `last_reserved_ip.0`, overwritten in place (host-local's exact content).
    /// Truncating or renaming over the file makes ext4 flush it (milliseconds); a plugin killed
    /// mid-write leaves at worst a wrong or unparsable hint, which only moves the round-robin start.
    fn write_last_reserved(&self, ip: Ipv4Addr) -> Result<()> {
        self.write_last_reserved_to(LAST_RESERVED_FILE, &ip.to_string())
    }

    /// Writes `text` to the last-reserved file `name`, as [`LockedStore::write_last_reserved`].
    fn write_last_reserved_to(&self, name: &str, text: &str) -> Result<()> {
        let path = self.dir.join(name);
        let write = || -> io::Result<()> {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)?;
            file.write_all_at(text.as_bytes(), 0)?;
            file.set_len(text.len() as u64)
        };
        write().map_err(self.io("write last_reserved_ip", path.clone()))
    }

    /// Releases those of `hints` (e.g. the addresses in DEL's `prevResult`) that
    /// `(container_id, ifname)` holds, reading only their files; returns them.
    pub fn release_hinted(
        &self,
        hints: &[IpAddr],
        container_id: &str,
        ifname: &str,
    ) -> Result<Vec<IpAddr>> {
        let mut released = Vec::new();
        for ip in hints {
            let path = self.dir.join(ip.to_string());
            let owned = fs::read_to_string(&path)
                .ok()
                .and_then(|content| parse_owner(&content))
                .is_some_and(|(id, owner_ifname)| {
                    let allocation = Allocation {
                        ip: *ip,
                        container_id: id,
                        ifname: owner_ifname,
                    };
                    allocation.owned_by(container_id, ifname)
                });
            if owned {
                remove_if_present(&path)?;
                released.push(*ip);
            }
        }
        Ok(released)
    }

    /// Releases every address held by `(container_id, ifname)`, scanning all files; returns them.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        self.release_where(|a| a.owned_by(container_id, ifname))
            .map(|released| released.into_iter().map(|a| a.ip).collect())
    }

    /// Releases every allocation for which `stale` is true; returns them.
    pub fn release_where(&self, stale: impl Fn(&Allocation) -> bool) -> Result<Vec<Allocation>> {
        let mut released = Vec::new();
        for allocation in self.allocations()? {
            if stale(&allocation) {
                remove_if_present(&self.dir.join(allocation.ip.to_string()))?;
                released.push(allocation);
            }
        }
        Ok(released)
    }
}

fn is_empty_file(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0)
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            op: "remove",
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(s: &str) -> Pool {
        Pool::new(s.parse().unwrap())
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "weft-ipam-{tag}-{}-{}",
                std::process::id(),
                rand_suffix()
            ));
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    fn rand_suffix() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    }

    #[test]
    fn static_allocation_own_taken_and_refused() {
        let dir = TempDir::new("static");
        let store = IpamStore::new(&dir.0, "net");
        let locked = store.lock().unwrap();
        let p = pool("10.244.1.1/24");
        assert!(p.static_refusal(ip("10.244.1.50")).is_none());
        for bad in ["10.244.1.0", "10.244.1.1", "10.244.1.255", "10.244.2.5"] {
            assert!(p.static_refusal(ip(bad)).is_some(), "{bad}");
        }
        assert!(
            locked
                .allocate_static(ip("10.244.1.50"), "c1", "eth0")
                .unwrap(),
            "made by this call"
        );
        assert_eq!(
            fs::read_to_string(dir.0.join("net/10.244.1.50")).unwrap(),
            "c1\r\neth0"
        );
        assert_eq!(locked.last_reserved(), Some(ip("10.244.1.50")));
        assert!(
            !locked
                .allocate_static(ip("10.244.1.50"), "c1", "eth0")
                .unwrap(),
            "already held by the same attachment: not this call's to undo"
        );
        let err = locked
            .allocate_static(ip("10.244.1.50"), "c2", "eth0")
            .unwrap_err();
        assert_eq!(err.code(), 106);
        assert!(err.to_string().contains("c1"), "{err}");
        fs::write(dir.0.join("net/10.244.1.51"), "").unwrap();
        locked
            .allocate_static(ip("10.244.1.51"), "c3", "eth0")
            .unwrap();
    }

    #[test]
    fn state_files_get_host_locals_modes_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("modes");
        // A runtime started with umask 0 (each test is its own process under nextest).
        // SAFETY: umask only swaps the process's file creation mask.
        let before = unsafe { libc::umask(0) };
        let store = IpamStore::new(&dir.0, "net");
        let made = (|| {
            let locked = store.lock()?;
            locked.allocate(&pool("10.244.1.1/24"), "c1", "eth0")?;
            locked.allocate_static(ip("10.244.1.50"), "c2", "eth0")?;
            locked.allocate6(
                &Pool6::new("fd00:10:244:1::1/64".parse().unwrap()),
                "c1",
                "eth0",
            )?;
            Ok::<_, Error>(())
        })();
        // SAFETY: as above.
        unsafe { libc::umask(before) };
        made.unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(store.dir()), 0o755, "{}", store.dir().display());
        let mut files = 0;
        for entry in fs::read_dir(store.dir()).unwrap() {
            let path = entry.unwrap().path();
            assert_eq!(mode(&path), 0o600, "{}", path.display());
            files += 1;
        }
        // Three addresses, two last-reserved files, the lock.
        assert_eq!(files, 6);
    }

    #[test]
    fn a_pool_of_almost_every_address_wraps_without_overflow() {
        let p = pool("0.0.0.1/0");
        let last = ip("255.255.255.253");
        let first: Vec<Ipv4Addr> = p.candidates(Some(last)).take(3).collect();
        assert_eq!(first, [ip("255.255.255.254"), ip("0.0.0.2"), ip("0.0.0.3")]);
    }

    #[test]
    fn pool_bounds_and_capacity() {
        let p = pool("10.244.1.1/24");
        assert_eq!(p.capacity(), 253);
        let all: Vec<Ipv4Addr> = p.candidates(None).collect();
        assert_eq!(all.len(), 253);
        assert!(!all.contains(&ip("10.244.1.0")));
        assert!(!all.contains(&ip("10.244.1.1")), "gateway");
        assert!(all.contains(&ip("10.244.1.2")));
        assert!(all.contains(&ip("10.244.1.254")));
        assert!(!all.contains(&ip("10.244.1.255")));
        assert_eq!(pool("10.244.1.1/30").capacity(), 1);
    }

    #[test]
    fn candidates_round_robin_after_last_reserved() {
        let p = pool("10.244.1.1/29");
        let from_start: Vec<String> = p.candidates(None).map(|i| i.to_string()).collect();
        assert_eq!(
            from_start,
            [
                "10.244.1.2",
                "10.244.1.3",
                "10.244.1.4",
                "10.244.1.5",
                "10.244.1.6"
            ]
        );
        let after: Vec<String> = p
            .candidates(Some(ip("10.244.1.4")))
            .map(|i| i.to_string())
            .collect();
        assert_eq!(
            after,
            [
                "10.244.1.5",
                "10.244.1.6",
                "10.244.1.2",
                "10.244.1.3",
                "10.244.1.4"
            ]
        );
        let wrap: Vec<String> = p
            .candidates(Some(ip("10.244.1.6")))
            .map(|i| i.to_string())
            .collect();
        assert_eq!(wrap[0], "10.244.1.2");
        let outside: Vec<Ipv4Addr> = p.candidates(Some(ip("10.9.9.9"))).collect();
        assert_eq!(outside[0], ip("10.244.1.2"));
    }

    #[test]
    fn owner_format_matches_host_local() {
        assert_eq!(format_owner("abc", "eth0"), "abc\r\neth0");
        assert_eq!(
            parse_owner("abc\r\neth0"),
            Some(("abc".into(), Some("eth0".into())))
        );
        assert_eq!(parse_owner("abc\n"), Some(("abc".into(), None)));
        assert_eq!(parse_owner(""), None);
    }

    #[test]
    fn allocate_release_on_disk() {
        let tmp = TempDir::new("disk");
        let store = IpamStore::new(&tmp.0, "net");
        let p = pool("10.244.1.1/24");
        let locked = store.lock().unwrap();
        let a = locked.allocate(&p, "c1", "eth0").unwrap();
        let b = locked.allocate(&p, "c2", "eth0").unwrap();
        assert_eq!(a, ip("10.244.1.2"));
        assert_eq!(b, ip("10.244.1.3"));
        let dir = store.dir();
        assert_eq!(
            fs::read_to_string(dir.join("10.244.1.2")).unwrap(),
            "c1\r\neth0"
        );
        assert_eq!(
            fs::read_to_string(dir.join(LAST_RESERVED_FILE)).unwrap(),
            "10.244.1.3"
        );
        assert!(dir.join(LOCK_FILE).exists());
        assert_eq!(locked.release("c1", "eth0").unwrap(), vec![IpAddr::from(a)]);
        assert!(locked.release("c1", "eth0").unwrap().is_empty());
        let c = locked.allocate(&p, "c3", "eth0").unwrap();
        assert_eq!(
            c,
            ip("10.244.1.4"),
            "round-robin continues after last reserved"
        );
        for n in 5..=12 {
            locked.allocate(&p, &format!("c{n}"), "eth0").unwrap();
        }
        assert_eq!(
            fs::read_to_string(dir.join(LAST_RESERVED_FILE)).unwrap(),
            "10.244.1.12",
            "a longer address overwrites in place"
        );
        locked.allocate(&p, "c13", "eth0").unwrap();
        assert_eq!(locked.last_reserved(), Some(ip("10.244.1.13")));
        let names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(names.is_empty(), "temporaries left: {names:?}");
    }

    #[test]
    fn release_hinted_reads_only_the_hinted_files() {
        let tmp = TempDir::new("hint");
        let store = IpamStore::new(&tmp.0, "net");
        let p = pool("10.244.1.1/24");
        let locked = store.lock().unwrap();
        let a = locked.allocate(&p, "c1", "eth0").unwrap();
        let b = locked.allocate(&p, "c2", "eth0").unwrap();
        assert!(locked
            .release_hinted(&[b.into()], "c1", "eth0")
            .unwrap()
            .is_empty());
        assert_eq!(
            locked
                .release_hinted(&[a.into(), b.into()], "c1", "eth0")
                .unwrap(),
            vec![IpAddr::from(a)]
        );
        assert_eq!(locked.allocations().unwrap().len(), 1);
    }

    #[test]
    fn crash_leftovers_are_recovered() {
        let tmp = TempDir::new("crash");
        let store = IpamStore::new(&tmp.0, "net");
        let p = pool("10.244.1.1/29");
        fs::create_dir_all(store.dir()).unwrap();
        fs::write(store.dir().join("10.244.1.2"), "").unwrap();
        fs::write(store.dir().join("10.244.1.3"), "legacy").unwrap();
        let locked = store.lock().unwrap();
        assert_eq!(
            locked.allocate(&p, "c1", "eth0").unwrap(),
            ip("10.244.1.2"),
            "an empty file does not block its address"
        );
        fs::write(store.dir().join("10.244.1.4"), "").unwrap();
        assert_eq!(
            locked.allocations().unwrap().len(),
            2,
            "a scan drops empty files"
        );
        assert!(!store.dir().join("10.244.1.4").exists());
        assert_eq!(
            locked.release("legacy", "eth0").unwrap(),
            vec![ip("10.244.1.3")]
        );
    }

    #[test]
    fn exhaustion_names_the_subnet() {
        let tmp = TempDir::new("full");
        let store = IpamStore::new(&tmp.0, "net");
        let p = pool("10.244.1.1/29");
        let locked = store.lock().unwrap();
        for n in 0..5 {
            locked.allocate(&p, &format!("c{n}"), "eth0").unwrap();
        }
        let err = locked.allocate(&p, "c9", "eth0").unwrap_err();
        assert_eq!(err.code(), 101);
        assert!(err.to_string().contains("10.244.1.0/29"), "{err}");
    }

    #[test]
    fn release_where_keeps_valid() {
        let tmp = TempDir::new("gc");
        let store = IpamStore::new(&tmp.0, "net");
        let p = pool("10.244.1.1/24");
        let locked = store.lock().unwrap();
        locked.allocate(&p, "keep", "eth0").unwrap();
        locked.allocate(&p, "drop", "eth0").unwrap();
        let released = locked.release_where(|a| a.container_id != "keep").unwrap();
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].container_id, "drop");
        assert_eq!(locked.allocations().unwrap().len(), 1);
    }

    #[test]
    fn ipv6_allocations_share_the_directory_as_range_set_1() {
        let tmp = TempDir::new("v6");
        let store = IpamStore::new(&tmp.0, "net");
        let p4 = pool("10.244.1.1/24");
        let p6 = Pool6::new("fd00:10:244:1::1/64".parse().unwrap());
        let locked = store.lock().unwrap();
        let a4 = locked.allocate(&p4, "c1", "eth0").unwrap();
        let a6 = locked.allocate6(&p6, "c1", "eth0").unwrap();
        let b6 = locked.allocate6(&p6, "c2", "eth0").unwrap();
        // host-local's layout: a file named by the address, range set 1's last reserved.
        assert_eq!(
            a6.to_string(),
            "fd00:10:244:1::2",
            "the gateway ::1 is skipped"
        );
        assert_eq!(b6.to_string(), "fd00:10:244:1::3");
        let dir = store.dir();
        assert_eq!(
            fs::read_to_string(dir.join("fd00:10:244:1::2")).unwrap(),
            "c1\r\neth0"
        );
        assert_eq!(
            fs::read_to_string(dir.join(LAST_RESERVED_FILE_6)).unwrap(),
            "fd00:10:244:1::3"
        );
        assert_eq!(
            fs::read_to_string(dir.join(LAST_RESERVED_FILE)).unwrap(),
            "10.244.1.2"
        );
        // DEL releases both families of the attachment; GC sees both.
        assert_eq!(locked.allocations().unwrap().len(), 3);
        let mut released = locked.release("c1", "eth0").unwrap();
        released.sort();
        assert_eq!(released, vec![IpAddr::from(a4), IpAddr::from(a6)]);
        let gc = locked.release_where(|a| a.container_id == "c2").unwrap();
        assert_eq!(gc.len(), 1);
        assert_eq!(gc[0].ip, IpAddr::from(b6));
        // Round robin continues after the last reserved IPv6 address.
        assert_eq!(
            locked.allocate6(&p6, "c3", "eth0").unwrap().to_string(),
            "fd00:10:244:1::4"
        );
    }
}
