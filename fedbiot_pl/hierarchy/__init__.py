"""HierFedLoRA's pieces that need no model: grouping, the device fleet, depth costs, the schedule and the clock."""
