//! Child processes that die with their owner: a test that panics, or a run
//! that returns early with an error, must not leave a child behind (it
//! would hold rows, connections or ports for the next run).

use std::io;
use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, ExitStatus};

/// A spawned child process that is killed (SIGKILL) and reaped when the
/// guard is dropped, unless it has already exited. Derefs to the
/// [`Child`], for its pipes and `wait`.
#[derive(Debug)]
pub struct KillOnDrop(Child);

impl KillOnDrop {
    /// Spawns `command`.
    ///
    /// # Errors
    ///
    /// When the process cannot be started.
    pub fn spawn(command: &mut Command) -> io::Result<Self> {
        command.spawn().map(KillOnDrop)
    }

    /// Kills the child now (SIGKILL) and reaps it.
    ///
    /// # Errors
    ///
    /// When the signal cannot be sent (it has not already exited) or the
    /// wait fails.
    pub fn kill_and_wait(&mut self) -> io::Result<ExitStatus> {
        self.0.kill()?;
        self.0.wait()
    }
}

impl Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Already reaped: nothing to do (kill of an exited child is
        // harmless, its pid is not reused until it is waited for).
        if matches!(self.0.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: u32) -> bool {
        // A reaped process has no /proc entry; a zombie would still have one.
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn a_dropped_guard_kills_and_reaps_its_child() {
        let guard = KillOnDrop::spawn(Command::new("sleep").arg("600")).unwrap();
        let pid = guard.id();
        assert!(alive(pid));
        drop(guard);
        assert!(!alive(pid), "the child {pid} outlived its guard");
    }

    #[test]
    fn a_guard_unwinding_from_a_panic_kills_its_child() {
        let (send, receive) = std::sync::mpsc::channel();
        let panicked = std::thread::spawn(move || {
            let guard = KillOnDrop::spawn(Command::new("sleep").arg("600")).unwrap();
            send.send(guard.id()).unwrap();
            panic!("the test failed while its child ran");
        })
        .join();
        assert!(panicked.is_err());
        let pid = receive.recv().unwrap();
        assert!(!alive(pid), "the child {pid} outlived the panic");
    }

    #[test]
    fn a_child_that_exited_is_left_alone() {
        let mut guard = KillOnDrop::spawn(&mut Command::new("true")).unwrap();
        assert!(guard.wait().unwrap().success());
        drop(guard);
    }
}
