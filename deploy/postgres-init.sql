-- One database per domain (vertical partitioning), on one server here; each can move to its own.
CREATE DATABASE presentation;
CREATE DATABASE inventory;
CREATE DATABASE orders;
CREATE DATABASE payments;
