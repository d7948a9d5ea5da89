# shellcheck shell=bash
# What a test run must not leave behind: network namespaces, processes, mounts and cgroups.
#
#   source scripts/lib/leftovers.sh
#   leftovers_snapshot          # before the tests
#   leftovers_report ROOT       # after them: prints each leftover, returns 1 if there is one
#
# Test files name what they create after their own pid (weft-<pid>-.., weftk-<pid>-..,
# weft-st-<pid>-.., weft-t<pid>-..), so a name whose owner is dead is a leak even on a machine
# where other test runs are going on at the same time.

# The pid a test-made name was created by, if NAME is one.
_lo_owner_pid() {
    if [[ $1 =~ ^weft(k-|-st-|-t|-)([0-9]+)- ]]; then
        echo "${BASH_REMATCH[2]}"
    fi
}

# True if NAME was made by a test process that is gone (or does not name its owner).
_lo_orphaned() {
    local pid
    pid=$(_lo_owner_pid "$1")
    [ -z "$pid" ] || ! [ -d "/proc/$pid" ]
}

_lo_netns() { ip netns list 2>/dev/null | awk '{print $1}' | sort; }
_lo_cgroups() { find /sys/fs/cgroup/weft -mindepth 1 -type d 2>/dev/null | sort; }

leftovers_snapshot() {
    LO_NETNS_BEFORE=$(_lo_netns)
    LO_CGROUPS_BEFORE=$(_lo_cgroups)
}

leftovers_report() {
    local root=$1 found=0 name pid exe cmd mnt dir
    while read -r name; do
        [ -n "$name" ] || continue
        if _lo_orphaned "$name"; then
            echo "leftover network namespace: $name (pids: $(ip netns pids "$name" 2>/dev/null | tr '\n' ' '))"
            found=1
        fi
    done < <(comm -13 <(echo "$LO_NETNS_BEFORE") <(_lo_netns))
    for dir in /proc/[0-9]*; do
        pid=${dir#/proc/}
        exe=$(readlink "$dir/exe" 2>/dev/null) || continue
        cmd=$(tr '\0' ' ' <"$dir/cmdline" 2>/dev/null) || continue
        # Binaries of this checkout (weftd, weft-shim, weft-pause, the plugin) or anything running
        # out of a test's temp dir (etcd's data dir, a pod's bundle).
        if [[ $exe == "$root/target/"* && $exe != */deps/* ]]; then
            echo "leftover process $pid: $cmd"
            found=1
            continue
        fi
        for word in $cmd; do
            # QEMU names its files inside option lists: "socket,id=agent,path=/dev/shm/weft-..".
            word=${word##*=}
            name=${word#/dev/shm/}
            name=${name#/tmp/}
            if [ "$name" != "$word" ] && [ -n "$(_lo_owner_pid "${name%%/*}")" ] && _lo_orphaned "${name%%/*}"; then
                echo "leftover process $pid: $cmd"
                found=1
                break
            fi
        done
    done
    while read -r mnt; do
        for part in ${mnt//\// }; do
            if [ -n "$(_lo_owner_pid "$part")" ] && _lo_orphaned "$part"; then
                echo "leftover mount: $mnt"
                found=1
                break
            fi
        done
    done < <(awk '{print $5}' /proc/self/mountinfo)
    while read -r dir; do
        [ -n "$dir" ] || continue
        echo "leftover cgroup: $dir (pids: $(tr '\n' ' ' <"$dir/cgroup.procs" 2>/dev/null))"
        found=1
    done < <(comm -13 <(echo "$LO_CGROUPS_BEFORE") <(_lo_cgroups))
    return "$found"
}
