// A pool of worker threads (java.util.concurrent) hashing on and on; once
// the trigger file appears each stops, and its digest must equal one
// recomputed from scratch for the same count. Usage: Workers TRIGGER RESULTS

import java.security.MessageDigest;
import java.util.concurrent.*;
import java.util.concurrent.atomic.*;
import java.nio.file.*;
import java.util.*;

public class Workers {
    static final AtomicBoolean stop = new AtomicBoolean(false);
    public static void main(String[] args) throws Exception {
        int n = 6;
        ExecutorService pool = Executors.newFixedThreadPool(n);
        AtomicLongArray progress = new AtomicLongArray(n);
        List<Future<String>> fs = new ArrayList<>();
        for (int k = 0; k < n; k++) {
            final int id = k;
            fs.add(pool.submit(() -> {
                MessageDigest md = MessageDigest.getInstance("SHA-256");
                long i = 0;
                Map<Long, Long> map = new HashMap<>();
                while (!stop.get()) {
                    md.update(("w" + id + ":" + i).getBytes());
                    map.put(i % 1000, i);
                    i++;
                    progress.set(id, i);
                }
                MessageDigest check = MessageDigest.getInstance("SHA-256");
                for (long j = 0; j < i; j++) check.update(("w" + id + ":" + j).getBytes());
                String a = HexFormat.of().formatHex(md.digest()), b = HexFormat.of().formatHex(check.digest());
                if (!a.equals(b)) throw new IllegalStateException("worker " + id + " lost its state");
                return id + " " + i + " " + a;
            }));
        }
        while (true) { boolean all = true; for (int k = 0; k < n; k++) if (progress.get(k) < 1000) all = false; if (all) break; Thread.sleep(10); }
        System.out.println("ready " + Thread.activeCount());
        Path trigger = Paths.get(args[0]);
        while (!Files.exists(trigger)) Thread.sleep(50);
        stop.set(true);
        StringBuilder sb = new StringBuilder();
        for (Future<String> f : fs) sb.append(f.get()).append('\n');
        Files.writeString(Paths.get(args[1]), sb.toString());
        pool.shutdown();
        System.out.println("ok");
    }
}
