"""Chain bindings: the deployment JSON, ABIs from forge's build output, and small reader/writer
Protocols over web3.py for the AVS contracts (see docs/contracts.md)."""
