//! Whether the cluster is whole again after a fault: every process
//! running, every service answering its health check, one scheduler
//! leading.

use crate::{Sandbox, serving_over};

impl Sandbox {
    /// The schedulers that answer SERVING now: the leader, or none between
    /// leaders. Two would be two leaders at once.
    pub async fn scheduler_leaders(&self) -> Vec<String> {
        let mut leaders = Vec::new();
        let tls = self.internal_tls().ok().flatten();
        for (name, port) in self.grpc_ports.iter().filter(|(n, _)| n.starts_with("scheduler")) {
            if serving_over(*port, tls.clone()).await {
                leaders.push(name.clone());
            }
        }
        leaders
    }

    /// The scheduler that leads now, if one does.
    pub async fn scheduler_leader(&self) -> anyhow::Result<Option<String>> {
        Ok(self.scheduler_leaders().await.into_iter().next())
    }

    /// What is not whole yet: processes that are not running, services
    /// that do not answer SERVING, and the schedulers if not exactly one
    /// leads. Empty when the cluster is whole.
    pub async fn unhealthy(&self) -> Vec<String> {
        let mut wrong = Vec::new();
        if let Err(e) = self.check_all_alive() {
            wrong.push(e.to_string().lines().next().unwrap_or_default().to_owned());
        }
        let tls = self.internal_tls().ok().flatten();
        for (name, port) in self.grpc_ports.iter().filter(|(n, _)| !n.starts_with("scheduler") && n != "gateway") {
            if !serving_over(*port, tls.clone()).await {
                wrong.push(format!("{name} is not serving"));
            }
        }
        if self.gateway_endpoint().is_err() || !self.gateway_serving().await {
            wrong.push("gateway is not serving".into());
        }
        let leaders = self.scheduler_leaders().await;
        if leaders.len() != 1 {
            wrong.push(format!("schedulers leading: {leaders:?}"));
        }
        wrong
    }
}
