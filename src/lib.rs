//! ferry: checkpoint, restore and live-migrate Linux processes.
