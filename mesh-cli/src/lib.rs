//! mesh-cli: the operator's tool for Agent Mesh (kill, resume, status, audit, tail, demo, up).
