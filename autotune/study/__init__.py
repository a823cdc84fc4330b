"""The study: opening it in its storage, the queue that hands its trials to workers, one trial's objective, the
loop that runs them, the re-measurement of the winners, and a worker's whole session."""
