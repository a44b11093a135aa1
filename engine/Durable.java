import de.bwaldvogel.mongo.bson.Document;
import io.netty.channel.Channel;
import org.h2.mvstore.MVStore;

import java.util.List;
import java.util.Locale;
import java.util.Set;
import java.util.concurrent.atomic.AtomicLong;

/**
 * H2 storage whose acknowledged writes survive a kill -9 of the engine (issue 10).
 *
 * Plain H2Backend answers a write as soon as its MVMaps hold it and leaves the
 * file to MVStore's background commit, so killing the engine lost writes it had
 * acknowledged up to 100 ms earlier, while their producer went on to publish
 * 'written' events for them. Here every command that may change data commits
 * before its answer is sent.
 *
 * Why handleCommand: every request that can write reaches it. mongo-java-server
 * 1.47 reads only OP_MSG and OP_QUERY (the legacy OP_INSERT/OP_UPDATE/OP_DELETE
 * are gone); OP_MSG goes through AbstractMongoBackend.handleMessage, which calls
 * handleCommand, and an OP_QUERY on "$cmd" is sent to handleCommand by the wire
 * handler. Other OP_QUERYs are finds. The answer is written to the socket only
 * after handleCommand returns.
 *
 * What is promised: when a write is answered, its changes (and every change
 * made before it) have been written to DIR/mopq.mv.db with write(2), so they
 * are in the OS page cache and survive the engine's process dying in any way
 * (kill -9, the OOM killer, a JVM crash). Not promised: surviving a power loss
 * or a kernel crash. That would need an fsync (MVStore.sync) per commit, which
 * costs milliseconds on a real disk; the embedded engine is for development and
 * tests, and production runs on MongoDB. A graceful stop syncs (MVStore.close).
 */
final class Durable extends IndexFirst.H2 {

    /**
     * Commands that never change data, answered without a commit so reads cost
     * what they did. Names are compared in lower case, as the backend does.
     * Anything not listed (every write, and commands this list does not know)
     * commits, which only costs time.
     */
    private static final Set<String> READS = Set.of(
            "find", "getmore", "count", "distinct", "listcollections", "listindexes",
            "listdatabases", "dbstats", "collstats", "validate", "killcursors", "endsessions",
            "hello", "ismaster", "ping", "buildinfo", "whatsmyuri", "serverstatus", "hostinfo",
            "getlasterror", "connectionstatus", "getcmdlineopts", "getlog", "getfreemonitoringstatus");

    /** Write commands finished so far; a command's number is taken after its changes are made. */
    private final AtomicLong finished = new AtomicLong();
    /** Held while committing; the group commit's waiting room. */
    private final Object commitLock = new Object();
    /** Every command numbered up to this is in the file. Guarded by commitLock. */
    private long committed;

    /**
     * How long H2 keeps chunks it no longer needs before reusing their space.
     * Every commit writes a new chunk (about 38 KB per insert_one and 23 KB per
     * delete_one of a small document, measured with /proc/PID/io), so at H2's
     * default of 45 s a busy engine's file grew by about 40 MB a second (800 MB
     * after 20 s of insert_one and delete_one); with 1 s it stayed near 60 MB.
     * The default is sized for disks that reorder writes across a power loss,
     * which is not promised here. What remains is that a read walking an older
     * version of a map must still find its pages; here a collection's operations
     * are synchronized (a scan never walks a map that changes under it) and reads
     * take milliseconds, so 1 s is ample.
     */
    static final int RETENTION_MS = 1000;

    Durable(MVStore store) {
        super(store);
        store.setRetentionTime(RETENTION_MS);
    }

    @Override
    public Document handleCommand(Channel channel, String databaseName, String command, Document query) {
        if (readsOnly(command, query)) {
            return super.handleCommand(channel, databaseName, command, query);
        }
        try {
            return super.handleCommand(channel, databaseName, command, query);
        } finally {
            // Also when the command failed: an ordered insert_many or a bulk update may
            // have made part of its changes before the error that is answered.
            commitThrough(finished.incrementAndGet());
        }
    }

    private static boolean readsOnly(String command, Document query) {
        String name = command.toLowerCase(Locale.ROOT);
        if (name.equals("aggregate")) {
            // $out and $merge write (they are only allowed as the last stage).
            Object pipeline = query.get("pipeline");
            return pipeline instanceof List<?> stages && stages.stream().noneMatch(stage ->
                    stage instanceof Document d && (d.containsKey("$out") || d.containsKey("$merge")));
        }
        return READS.contains(name);
    }

    /**
     * Group commit: returns once command number {@code ticket} is in the file.
     *
     * Connections that finish writes while a commit runs wait here; the next
     * commit covers all of them (every number up to the one read before it
     * starts), and they return without committing again. So N connections
     * writing at once pay about one commit per round, not N.
     */
    private void commitThrough(long ticket) {
        synchronized (commitLock) {
            if (committed >= ticket) {
                return;
            }
            long upTo = finished.get();
            MVStore store = getMvStore();
            store.commit();
            // commit() writes synchronously, but when it finds nothing unsaved it
            // returns at once, and the changes may be in a commit H2 started by
            // itself (the 100 ms background one, or one for too much unsaved
            // memory) that its writer threads are still writing: those hand the
            // write over and return. Waiting for those threads to go idle closes
            // that gap.
            store.executeFilestoreOperation(() -> { });
            committed = upTo;
        }
    }
}
