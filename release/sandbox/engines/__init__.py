"""The sandbox's engines: AWS behaviour moto lacks, as plain code on an injected clock, with no
moto import (patches/ connects them to moto's state; the data plane runs the instances).

- refresh.py, refresh_prefs.py — instance refresh (and its preferences, checkpoints, rollback);
- health.py — target health checks (ELB's states, thresholds and reasons);
- alarms.py — CloudWatch alarm evaluation;
- alb.py — the Application Load Balancer's data path (a reverse proxy) and its metrics;
- ssm.py — Systems Manager Run Command (invocations, statuses, timeouts, output limits);
- imds.py — the instance metadata service (IMDSv2);
- ingress.py — security group rules, for SSH logins;
- errors.py — the error an engine raises where AWS answers with one.
"""
