#ifndef AGENTCHAT_PROCESS_SHIMS_H
#define AGENTCHAT_PROCESS_SHIMS_H

/// What Swift cannot call in Linux's process API: `prctl` is variadic, so it is not imported.

/// `prctl(PR_SET_PDEATHSIG, signal)`: the kernel sends `signal` to the calling process when the *thread* that
/// created it exits (so the creator must be a thread that lives as long as its process). Returns 0 or -1 (errno).
/// Elsewhere than Linux: -1.
int agentchat_set_parent_death_signal(int signal);

#endif
