//! The command line `ps` shows for a container's monitor and VMM child:
//! they are forks of whatever `vm` command started the container, so they
//! point /proc/PID/cmdline at words that name the container instead. The
//! kernel allows this with CAP_SYS_RESOURCE (root); without it the
//! command line stays the starting command's.

/// Makes this process's command line read `words`; returns whether it did.
pub fn set(words: &[&str]) -> bool {
    let mut buf = Vec::new();
    for w in words {
        buf.extend_from_slice(w.as_bytes());
        buf.push(0);
    }
    // Lives as long as the process: the kernel reads it for /proc.
    let text: &'static [u8] = Box::leak(buf.into_boxed_slice());
    let start = text.as_ptr() as libc::c_ulong;
    let end = start + text.len() as libc::c_ulong;
    // The kernel wants start <= end after each step: which end moves
    // first depends on where the old range lies (the stack, or a buffer
    // like this one that a forked parent left).
    let set = |what: libc::c_int, at: libc::c_ulong| {
        // SAFETY: prctl with integer arguments; the range is memory of
        // ours that is never freed.
        unsafe { libc::prctl(libc::PR_SET_MM, what, at, 0, 0) == 0 }
    };
    (set(libc::PR_SET_MM_ARG_START, start) && set(libc::PR_SET_MM_ARG_END, end))
        || (set(libc::PR_SET_MM_ARG_END, end) && set(libc::PR_SET_MM_ARG_START, start))
}
