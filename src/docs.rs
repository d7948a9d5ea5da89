//! Man pages and shell completions, rendered from a binary's own clap definition so they can
//! never disagree with its flags. The package build runs the hidden `weftd --generate-docs DIR`
//! and `weftctl generate-docs DIR`.

use std::io;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// Writes `DIR/man/<name>.<section>` (plus `<name>-<sub>.<section>` for each visible
/// subcommand) and `DIR/completions/{bash/<name>,zsh/_<name>,fish/<name>.fish}`.
/// Returns the files written.
pub fn generate(cmd: clap::Command, section: &str, dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut cmd = cmd;
    cmd.build();
    let name = cmd.get_name().to_string();
    let mut written = Vec::new();
    let man_dir = dir.join("man");
    std::fs::create_dir_all(&man_dir)?;
    let mut pages = Vec::new();
    collect_pages(&name, &cmd, &mut pages);
    for (page, command) in pages {
        let mut text = Vec::new();
        clap_mangen::Man::new(command)
            .section(section)
            .render(&mut text)?;
        let path = man_dir.join(format!("{page}.{section}"));
        std::fs::write(&path, text)?;
        written.push(path);
    }
    for (shell, file) in [
        (Shell::Bash, format!("bash/{name}")),
        (Shell::Zsh, format!("zsh/_{name}")),
        (Shell::Fish, format!("fish/{name}.fish")),
    ] {
        let path = dir.join("completions").join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut cmd, name.clone(), &mut text);
        std::fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}

/// `cmd` as page `page`, then every visible subcommand as `<page>-<sub>`, as the pages'
/// SUBCOMMANDS sections name them.
fn collect_pages(page: &str, cmd: &clap::Command, pages: &mut Vec<(String, clap::Command)>) {
    pages.push((page.to_string(), cmd.clone().name(page.to_string())));
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        collect_pages(&format!("{page}-{}", sub.get_name()), sub, pages);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_for_the_command_and_its_visible_subcommands() {
        let cmd = clap::Command::new("demo")
            .about("A demo")
            .arg(clap::Arg::new("iface").long("iface").help("The interface"))
            .subcommand(
                clap::Command::new("status")
                    .about("Show status")
                    .subcommand(clap::Command::new("peers")),
            )
            .subcommand(clap::Command::new("secret").hide(true));
        let dir = tempfile::tempdir().unwrap();
        let mut files: Vec<String> = generate(cmd, "8", dir.path())
            .unwrap()
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        files.sort();
        assert_eq!(
            files,
            [
                "completions/bash/demo",
                "completions/fish/demo.fish",
                "completions/zsh/_demo",
                "man/demo-status-peers.8",
                "man/demo-status.8",
                "man/demo.8",
            ]
        );
        let page = std::fs::read_to_string(dir.path().join("man/demo.8")).unwrap();
        assert!(page.contains(".TH demo 8"), "{page}");
        assert!(page.contains("\\-\\-iface"), "{page}");
        let bash = std::fs::read_to_string(dir.path().join("completions/bash/demo")).unwrap();
        assert!(bash.contains("--iface"), "{bash}");
    }
}
