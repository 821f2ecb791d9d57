//! Progress events from node tasks, rendered by one reporter (bars on a TTY, plain lines, JSON).
