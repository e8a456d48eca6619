-- `sisy hosts drain HOST`: the host claims nothing new.
SELECT sisy.drain($1)
