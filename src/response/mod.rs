//! Feature response → gray map → local spatial entropy and region statistics.
