"The training callbacks, one a module: the span they schedule over, and the schedules on it"
