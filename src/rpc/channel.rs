//! One SOCK_SEQPACKET socket carrying packed protobuf messages, one per
//! packet: requests in, answers out.

use super::criu::{CriuNotify, CriuReq, CriuReqType, CriuResp};
use anyhow::{bail, Context, Result};
use nix::sys::socket::{recv, send, sendmsg, ControlMessage, MsgFlags};
use prost::Message;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    pub fn new(fd: OwnedFd) -> Channel {
        Channel { fd }
    }

    /// The next request; None once the caller has closed its end.
    pub fn recv(&self) -> Result<Option<CriuReq>> {
        // The packet's size first (MSG_TRUNC reports a packet's full
        // length), then the whole packet in one read.
        let len = recv(self.fd.as_raw_fd(), &mut [], MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC)
            .context("reading a request")?;
        let mut buf = vec![0u8; len];
        let got = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_TRUNC).context("reading a request")?;
        if got == 0 {
            return Ok(None);
        }
        if got != len {
            bail!("a request of {len} bytes arrived as {got}");
        }
        CriuReq::decode(buf.as_slice()).map(Some).context("the request is not a criu_req message")
    }

    /// Tell the caller that ferry reached `script` (CRIU's name of an
    /// action-script point) and wait for its go-ahead.
    pub fn notify(&self, script: &str, pid: Option<i32>) -> Result<()> {
        self.notify_with(script, pid, None)
    }

    /// [`Channel::notify`] with a descriptor attached (SCM_RIGHTS), as
    /// CRIU gives the caller a new pty master ("orphan-pts-master").
    pub fn notify_fd(&self, script: &str, fd: BorrowedFd) -> Result<()> {
        self.notify_with(script, None, Some(fd))
    }

    fn notify_with(&self, script: &str, pid: Option<i32>, fd: Option<BorrowedFd>) -> Result<()> {
        let notify = CriuNotify { script: Some(script.to_string()), pid };
        let resp =
            CriuResp { r#type: CriuReqType::Notify as i32, success: true, notify: Some(notify), ..Default::default() };
        match fd {
            None => self.send(&resp)?,
            Some(fd) => {
                let buf = resp.encode_to_vec();
                let fds = [fd.as_raw_fd()];
                let cmsg = [ControlMessage::ScmRights(&fds)];
                let sent = sendmsg::<()>(
                    self.fd.as_raw_fd(),
                    &[std::io::IoSlice::new(&buf)],
                    &cmsg,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .with_context(|| format!("sending the {script} notification"))?;
                if sent != buf.len() {
                    bail!("the {script} notification of {} bytes went out as {sent}", buf.len());
                }
            }
        }
        let back = self.recv()?.with_context(|| format!("the caller hung up at the {script} notification"))?;
        if back.r#type != CriuReqType::Notify as i32 || back.notify_success != Some(true) {
            bail!("the caller failed the {script} notification");
        }
        Ok(())
    }

    /// The caller's PID (whose descriptors the requests name).
    pub fn peer(&self) -> Result<i32> {
        let cred = nix::sys::socket::getsockopt(&self.fd, nix::sys::socket::sockopt::PeerCredentials)
            .context("SO_PEERCRED: who is calling")?;
        Ok(cred.pid())
    }

    pub fn send(&self, resp: &CriuResp) -> Result<()> {
        let buf = resp.encode_to_vec();
        let sent = send(self.fd.as_raw_fd(), &buf, MsgFlags::MSG_NOSIGNAL).context("sending an answer")?;
        if sent != buf.len() {
            bail!("an answer of {} bytes went out as {sent}", buf.len());
        }
        Ok(())
    }
}
