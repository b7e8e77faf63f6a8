"""Controllers reconcile each kind's stored spec toward running replicas, routes and status."""
